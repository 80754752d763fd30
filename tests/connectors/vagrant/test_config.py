"""`config.parse`: a Vagrant backend's settings with their defaults, and every malformed key refused with a
ConfigError naming it (what `labdesk backends add NAME --kind vagrant --config '{...}'` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from connectors.vagrant import config

SEED = {"credential_seed": "c2VjcmV0LXNlZWQ"}


def parse(name: str = "lab-host", **values: Any) -> config.VagrantSettings:
    return config.parse(name, {**SEED, **values})


def refused(values: dict[str, Any], name: str = "lab-host", require_secrets: bool = True) -> str:
    with pytest.raises(ConfigError) as caught:
        config.parse(name, values, require_secrets)
    return str(caught.value)


# -- defaults -------------------------------------------------------------------------------------------------
def test_defaults() -> None:
    settings = parse("lab-host")
    assert settings.backend == "lab-host"
    assert settings.state_dir == Path("/var/lib/labdesk/vagrant/lab-host")
    assert settings.home.is_relative_to(settings.state_dir) and settings.home != settings.state_dir
    assert settings.binary == "vagrant"
    assert settings.provider == "libvirt"
    assert settings.host_address == "127.0.0.1"
    assert settings.forward_ports[0] <= settings.forward_ports[1]
    assert settings.check_user is None
    assert dict(settings.env) == {}
    assert settings.credential_seed == SEED["credential_seed"]
    assert set(settings.timeouts) == set(config.OPERATIONS)
    assert all(value > 0 for value in settings.timeouts.values())


def test_the_home_follows_an_admins_state_dir() -> None:
    settings = parse(state_dir="/srv/labs")
    assert settings.state_dir == Path("/srv/labs")
    assert settings.home.is_relative_to(Path("/srv/labs")) and settings.home != Path("/srv/labs")
    assert parse(state_dir="/srv/labs", home="/srv/boxes").home == Path("/srv/boxes")


def test_libvirt_provider_defaults() -> None:
    options = parse("gpu-a").provider_options
    assert options["uri"] == "qemu:///system"
    assert options["suspend_mode"] == "managedsave"
    assert options["default_prefix"] == "gpu-a-"


def test_an_admins_provider_options_override_the_defaults() -> None:
    options = parse("gpu-a", provider_options={"uri": "qemu+ssh://kvm1/system", "default_prefix": "x-",
                                               "storage_pool_name": "labs"}).provider_options
    assert options["uri"] == "qemu+ssh://kvm1/system"
    assert options["default_prefix"] == "x-"
    assert options["storage_pool_name"] == "labs"
    assert options["suspend_mode"] == "managedsave"  # the defaults not named stay


def test_another_provider_gets_no_libvirt_settings() -> None:
    settings = parse(provider="virtualbox", provider_options={"gui": False})
    assert settings.provider == "virtualbox"
    assert dict(settings.provider_options) == {"gui": False}


def test_given_values_are_kept() -> None:
    settings = parse(binary="/opt/vagrant/bin/vagrant", forward_ports=[50000, 50099], host_address="10.0.0.5",
                     max_labs=3, timeouts={"up": 1200, "status": 30.5}, check_user="student",
                     env={"LIBVIRT_DEFAULT_URI": "qemu:///system"})
    assert settings.binary == "/opt/vagrant/bin/vagrant"
    assert settings.forward_ports == (50000, 50099)
    assert settings.host_address == "10.0.0.5"
    assert settings.max_labs == 3
    assert settings.timeouts["up"] == 1200 and settings.timeouts["status"] == 30.5
    assert settings.timeouts["destroy"] == parse().timeouts["destroy"]  # the others keep their default
    assert settings.check_user == "student"
    assert dict(settings.env) == {"LIBVIRT_DEFAULT_URI": "qemu:///system"}


def test_an_ipv6_host_address_is_accepted() -> None:
    assert parse(host_address="::1").host_address == "::1"


def test_the_seed_may_be_missing_when_secrets_are_not_required() -> None:
    assert config.parse("lab-host", {}, require_secrets=False).credential_seed is None


# -- refusals ---------------------------------------------------------------------------------------------------
def test_an_unknown_key_is_refused_with_a_did_you_mean() -> None:
    message = refused({**SEED, "state_dr": "/srv/labs"})
    assert "state_dr" in message
    assert 'did you mean "state_dir"' in message
    assert "lab-host" in message


def test_an_unknown_key_far_from_any_lists_the_known_ones() -> None:
    message = refused({**SEED, "zzzzzz": 1})
    assert "zzzzzz" in message and "state_dir" in message


@pytest.mark.parametrize("key, value", [
    ("state_dir", "labs/here"), ("state_dir", ""), ("state_dir", 5), ("state_dir", "/srv/\0x"),
    ("home", "vagrant.d"), ("home", None),
])
def test_a_path_must_be_absolute(key: str, value: Any) -> None:
    assert key in refused({**SEED, key: value})


@pytest.mark.parametrize("value", [
    [42999, 42000], [80, 90], [42000], [42000, 70000], "42000-42999", [42000.0, 42999], [True, 42999], None,
])
def test_bad_forward_ports(value: Any) -> None:
    assert "forward_ports" in refused({**SEED, "forward_ports": value})


@pytest.mark.parametrize("value", ["localhost", "999.1.1.1", "", None, "127.0.0.1:22", [127, 0, 0, 1]])
def test_bad_host_address(value: Any) -> None:
    assert "host_address" in refused({**SEED, "host_address": value})


@pytest.mark.parametrize("value", [False, 0, True, 2130706433])
def test_a_host_address_that_is_not_text_is_refused(value: Any) -> None:
    """A JSON false or 0 (a typo, a template left unfilled) must not become 0.0.0.0: every lab's forwarded
    SSH/RDP/VNC port would then listen on all of the host's interfaces."""
    assert "host_address" in refused({**SEED, "host_address": value})


def test_an_unknown_timeout_is_refused_naming_it() -> None:
    message = refused({**SEED, "timeouts": {"upp": 10}})
    assert "timeouts" in message and "upp" in message and 'did you mean "up"' in message


@pytest.mark.parametrize("value", [0, -1, "600", True, None, 86_401, float("nan")])
def test_a_bad_timeout_value_is_refused_naming_it(value: Any) -> None:
    message = refused({**SEED, "timeouts": {"halt": value}})
    assert "timeouts" in message and "halt" in message


def test_timeouts_must_be_a_table() -> None:
    assert "timeouts" in refused({**SEED, "timeouts": [900]})


@pytest.mark.parametrize("env", [
    {"lower": "x"}, {"A-B": "x"}, {"1ABC": "x"}, {"OK": 1}, {"OK": None}, {"": "x"}, {"A B": "x"}, ["A=x"],
])
def test_bad_env_is_refused(env: Any) -> None:
    message = refused({**SEED, "env": env})
    assert "env" in message
    if isinstance(env, dict):
        assert str(next(iter(env))) in message


@pytest.mark.parametrize("name", ["storage.pool", "a'b", 'a"b', "uri = 1", "Uri", "1uri", "a-b", ""])
def test_a_provider_option_name_that_is_not_a_plain_name_is_refused(name: str) -> None:
    message = refused({**SEED, "provider_options": {name: "x"}})
    assert "provider_options" in message and name in message


@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2], None, "nul\0"])
def test_a_provider_option_value_must_be_plain(value: Any) -> None:
    message = refused({**SEED, "provider_options": {"uri": value}})
    assert "provider_options" in message and "uri" in message


def test_provider_options_must_be_a_table() -> None:
    assert "provider_options" in refused({**SEED, "provider_options": "uri=qemu:///system"})


@pytest.mark.parametrize("provider", ["Libvirt", "lib virt", "libvirt'", "", 3])
def test_a_bad_provider_name_is_refused(provider: Any) -> None:
    assert "provider" in refused({**SEED, "provider": provider})


@pytest.mark.parametrize("key, value", [
    ("max_labs", 0), ("max_labs", "10"), ("max_labs", True), ("check_user", "Root!"), ("check_user", ""),
    ("binary", ""), ("binary", None),
])
def test_other_bad_values_name_their_key(key: str, value: Any) -> None:
    assert key in refused({**SEED, key: value})


@pytest.mark.parametrize("seed", [None, "", 12])
def test_a_missing_credential_seed_is_refused_when_required(seed: Any) -> None:
    values = {} if seed is None else {"credential_seed": seed}
    assert "credential_seed" in refused(values)
