"""The Vagrant backend's settings (`labdesk backends add NAME --kind vagrant --config '{...}'`), validated.

A Vagrant backend is one host: its labs are directories under `state_dir` and its boxes live in `home`
(VAGRANT_HOME), both on the machine whose workers serve the backend's queue. More hosts are more backends.
Every key is documented in docs/vagrant.md; an unknown or malformed one is refused naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from broker.errors import ConfigError
from connectors.settings import choice, known, port_range, seconds, seed, text, whole

TOP_KEYS = ("state_dir", "home", "binary", "provider", "provider_options", "forward_ports", "host_address",
            "max_labs", "timeouts", "check_user", "env", "suspend_by", "credential_seed")
SUSPEND_BY = ("suspend", "halt")
OPERATIONS = ("up", "resume", "suspend", "halt", "destroy", "status", "box", "lock")
DEFAULT_TIMEOUTS = {"up": 900.0, "resume": 300.0, "suspend": 300.0, "halt": 300.0, "destroy": 300.0,
                    "status": 60.0, "box": 1800.0, "lock": 60.0}
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}\Z")
OPTION = re.compile(r"[a-z_][a-z0-9_]*\Z")
LIBVIRT_DEFAULTS = {"uri": "qemu:///system", "suspend_mode": "managedsave"}


@dataclass(frozen=True)
class VagrantSettings:
    backend: str
    state_dir: Path
    home: Path
    binary: str = "vagrant"
    provider: str = "libvirt"
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    forward_ports: tuple[int, int] = (42000, 42999)
    host_address: str = "127.0.0.1"
    max_labs: int = 10
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    check_user: str | None = None  # None: the account Vagrant itself logs in as (ssh-config's User)
    env: Mapping[str, str] = field(default_factory=dict)
    suspend_by: str = "suspend"  # "halt": power off instead (the disk stays; what ran in memory does not)
    credential_seed: str | None = None


def parse(name: str, config: Mapping[str, Any], require_secrets: bool = True) -> VagrantSettings:
    """The backend's settings, or ConfigError naming the key at fault."""
    where = f"vagrant backend {name}"
    known(config, TOP_KEYS, where)
    state_dir = _absolute(config.get("state_dir", f"/var/lib/labdesk/vagrant/{name}"), f"{where}: state_dir")
    provider = text(config.get("provider", "libvirt"), NAME, f"{where}: provider", "a Vagrant provider name")
    return VagrantSettings(
        backend=name,
        state_dir=state_dir,
        home=_absolute(config.get("home", str(state_dir / "vagrant.d")), f"{where}: home"),
        binary=_binary(config.get("binary", "vagrant"), f"{where}: binary"),
        provider=provider,
        provider_options=_provider_options(name, provider, config.get("provider_options", {}), f"{where}: provider_options"),
        forward_ports=port_range(config.get("forward_ports", [42000, 42999]), f"{where}: forward_ports"),
        host_address=_address(config.get("host_address", "127.0.0.1"), f"{where}: host_address"),
        max_labs=whole(config.get("max_labs", 10), 1, f"{where}: max_labs", "labs this host runs at once"),
        timeouts=_timeouts(config.get("timeouts", {}), f"{where}: timeouts"),
        check_user=text(config["check_user"], USER, f"{where}: check_user", "a user name") if "check_user" in config else None,
        env=_env(config.get("env", {}), f"{where}: env"),
        suspend_by=choice(config.get("suspend_by", "suspend"), SUSPEND_BY, f"{where}: suspend_by"),
        credential_seed=seed(config.get("credential_seed"), require_secrets, where),
    )


def _absolute(raw: Any, at: str) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/") or "\0" in raw:
        raise ConfigError(f"{at}: expected an absolute path, got {raw!r}")
    return Path(raw)


def _binary(raw: Any, at: str) -> str:
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise ConfigError(f"{at}: expected the vagrant program's name or path, got {raw!r}")
    return raw


def _provider_options(backend: str, provider: str, raw: Any, at: str) -> dict[str, Any]:
    """Settings for the provider block of every lab's Vagrantfile (`lv.uri = ...`); libvirt gets defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a table of provider settings, got {raw!r}")
    for key, value in raw.items():
        if not OPTION.match(str(key)):
            raise ConfigError(f"{at}: {key}: not a provider setting name")
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and "\0" in value):
            raise ConfigError(f"{at}: {key}: expected a string, number or boolean, got {value!r}")
    if provider != "libvirt":
        return dict(raw)
    return {**LIBVIRT_DEFAULTS, "default_prefix": f"{backend}-", **raw}


def _address(raw: Any, at: str) -> str:
    """An IP address as text: ip_address() would also take 0 or false (0.0.0.0: every interface)."""
    if not isinstance(raw, str):
        raise ConfigError(f"{at}: expected an IP address the forwarded ports listen on, got {raw!r}")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ConfigError(f"{at}: expected an IP address the forwarded ports listen on, got {raw!r}") from None


def _timeouts(raw: Any, at: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a table of seconds per operation, got {raw!r}")
    known(raw, OPERATIONS, at)
    return {**DEFAULT_TIMEOUTS, **{key: seconds(value, f"{at}.{key}") for key, value in raw.items()}}


def _env(raw: Any, at: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a table of environment variables, got {raw!r}")
    for key, value in raw.items():
        if not ENV_NAME.match(str(key)) or not isinstance(value, str):
            raise ConfigError(f"{at}: {key}: expected NAME = \"text\" (upper-case name), got {value!r}")
    return dict(raw)
