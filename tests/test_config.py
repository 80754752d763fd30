"""Settings from defaults, TOML and `LABDESK_*` variables, with errors an admin can act on; the vault that
keeps backend credentials encrypted; and the registry of connector kinds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from broker.config import Settings, load_settings
from broker.errors import ConfigError, UnknownBackend
from broker.models import Backend
from broker.registry import connector_class
from broker.runtime import Runtime
from broker.secrets import Vault
from broker.testing.fake import FakeConnector


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, so a developer's ./labdesk.toml cannot leak into the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(folder: Path, body: str) -> Path:
    path = folder / "labdesk.toml"
    path.write_text(body)
    return path


# -- settings ----------------------------------------------------------------------------------------------
def test_defaults_load_with_nothing_configured(elsewhere: Path) -> None:
    settings = load_settings(environ={})

    assert settings == Settings()
    assert (settings.keepalive_interval, settings.idle_suspend_after, settings.default_backend) == (30, 120, "local")
    assert settings.sqlalchemy_url == f"sqlite:///{elsewhere / 'var' / 'labdesk.sqlite3'}"


def test_the_file_overrides_defaults_and_the_environment_overrides_the_file(elsewhere: Path) -> None:
    path = write_toml(elsewhere, 'keepalive_interval = 45\nidle_suspend_after = 300\npublic_url = "https://labs.example.edu"\n')
    environ = {"LABDESK_CONFIG": str(path), "LABDESK_KEEPALIVE_INTERVAL": "15", "LABDESK_DEV_LOGIN": "off"}

    settings = load_settings(environ=environ)

    assert settings.keepalive_interval == 15  # environment wins
    assert settings.idle_suspend_after == 300  # from the file
    assert settings.public_url == "https://labs.example.edu"
    assert settings.dev_login is False
    assert settings.reap_after_days == 14  # default


def test_a_labdesk_toml_in_the_working_folder_is_read_without_being_named(elsewhere: Path) -> None:
    write_toml(elsewhere, "sweep_interval = 7\n")

    assert load_settings(environ={}).sweep_interval == 7


def test_encryption_keys_come_from_a_comma_separated_variable(elsewhere: Path) -> None:
    settings = load_settings(environ={"LABDESK_ENCRYPTION_KEYS": "new-key, old-key"})

    assert settings.encryption_keys == ("new-key", "old-key")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LABDESK_KEEPALIVE_INTERVAL": "abc"}, "LABDESK_KEEPALIVE_INTERVAL: expected a positive whole number, got 'abc'"),
        ({"LABDESK_ORPHAN_GRACE": "0"}, "LABDESK_ORPHAN_GRACE: expected a positive whole number, got '0'"),
        ({"LABDESK_REAP_AFTER_DAYS": "-3"}, "LABDESK_REAP_AFTER_DAYS: expected a positive whole number, got '-3'"),
        ({"LABDESK_DEV_LOGIN": "maybe"}, "LABDESK_DEV_LOGIN: expected true or false, got 'maybe'"),
        ({"LABDESK_TUNNEL_TOKEN_TTL": "300"}, "tunnel_token_ttl: at most 60 seconds, got 300"),
        ({"LABDESK_GUACD_HOSTS": "guacd.example"}, "guacd_hosts: expected host:port, got 'guacd.example'"),
        ({"LABDESK_GUACD_HOSTS": ","}, "guacd_hosts: name at least one guacd as host:port"),
        ({"LABDESK_TUNNEL_LISTEN": "0.0.0.0:99999"}, "tunnel_listen: expected host:port, got '0.0.0.0:99999'"),
        ({"LABDESK_TUNNEL_URL": "https://x/tunnel"}, "tunnel_url: expected a ws:// or wss:// URL, got 'https://x/tunnel'"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(elsewhere: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)

    assert str(caught.value) == message


def test_a_bad_value_in_the_file_names_the_file_and_key(elsewhere: Path) -> None:
    path = write_toml(elsewhere, 'sweep_interval = "often"\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"LABDESK_CONFIG": str(path)})

    assert str(caught.value) == f"{path}: sweep_interval: expected a positive whole number, got 'often'"


def test_an_unknown_key_in_the_file_is_named(elsewhere: Path) -> None:
    path = write_toml(elsewhere, "idle_suspend_afer = 60\n")  # a typo an admin could make

    with pytest.raises(ConfigError, match=r"unknown setting 'idle_suspend_afer'") as caught:
        load_settings(environ={"LABDESK_CONFIG": str(path)})

    assert str(path) in str(caught.value)


def test_malformed_toml_is_reported_with_the_file_path(elsewhere: Path) -> None:
    path = write_toml(elsewhere, "keepalive_interval = = 3\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"LABDESK_CONFIG": str(path)})

    assert str(caught.value).startswith(f"config file {path} is not valid TOML")


def test_a_missing_config_file_is_reported(elsewhere: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"LABDESK_CONFIG": str(elsewhere / "nope.toml")})


# -- the vault ---------------------------------------------------------------------------------------------
def test_the_vault_round_trips_a_document() -> None:
    vault = Vault([Fernet.generate_key().decode()])
    secret = {"username": "admin", "password": "s3cret", "port": 5000}

    token = vault.seal(secret)

    assert b"s3cret" not in token
    assert vault.open(token) == secret
    assert vault.open(None) == {}


def test_a_value_sealed_with_an_old_key_opens_after_rotation() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed_before = Vault([old]).seal({"password": "before"})
    rotated = Vault([new, old])

    assert rotated.open(sealed_before) == {"password": "before"}
    sealed_after = rotated.seal({"password": "after"})
    assert Vault([new]).open(sealed_after) == {"password": "after"}  # new values use the new key


def test_a_wrong_key_gives_a_clear_error() -> None:
    token = Vault([Fernet.generate_key().decode()]).seal({"password": "x"})

    with pytest.raises(ConfigError, match="cannot be decrypted"):
        Vault([Fernet.generate_key().decode()]).open(token)
    with pytest.raises(ConfigError, match="encryption_keys"):
        Vault(["not-a-fernet-key"])


def test_credentials_are_not_readable_in_the_database_row(rt: Runtime) -> None:
    password = "correct-horse-battery-staple"
    with rt.session() as session:
        backend = Backend(name="cloud", kind="fake", config={"region": "north"}, secrets=rt.vault.seal({"password": password}))
        session.add(backend)
        session.commit()
        raw = session.execute(text("SELECT config, secrets FROM backends WHERE name = 'cloud'")).one()

    row_bytes = str(raw.config).encode() + bytes(raw.secrets)
    assert password.encode() not in row_bytes
    assert rt.vault.open(bytes(raw.secrets)) == {"password": password}
    assert rt.connector(backend).config == {"region": "north", "password": password}  # decrypted in memory only


# -- the registry ----------------------------------------------------------------------------------------
def test_connector_kinds_come_from_entry_points() -> None:
    assert connector_class("fake") is FakeConnector


def test_an_unknown_connector_kind_names_the_installed_ones() -> None:
    with pytest.raises(UnknownBackend) as caught:
        connector_class("nope")

    assert "'nope'" in str(caught.value)
    assert "fake" in str(caught.value) and "local" in str(caught.value)


def test_a_connector_whose_sdk_is_missing_is_left_out_and_named_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo installs no libvirt-python: the worker must still load the other connectors."""
    from importlib.metadata import EntryPoint

    from broker import registry

    broken = EntryPoint("gpu-cloud", "labdesk_no_such_sdk.connector:Cloud", registry.GROUP)
    real = registry.entry_points(group=registry.GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [*real, broken])
    registry._load.cache_clear()
    try:
        assert "gpu-cloud" not in registry.connector_kinds() and registry.connector_kinds()["fake"] is FakeConnector
        with pytest.raises(UnknownBackend) as caught:
            registry.connector_class("gpu-cloud")
        assert str(caught.value) == (
            "connector kind 'gpu-cloud' cannot load on this host: No module named 'labdesk_no_such_sdk' "
            "(install its extra, e.g. pip install 'labdesk[gpu-cloud]')"
        )
    finally:
        registry._load.cache_clear()


def test_two_encryption_keys_given_as_a_tuple_are_both_kept() -> None:
    settings = load_settings(environ={}, overrides={"encryption_keys": ("new-key", "old-key")})

    assert settings.encryption_keys == ("new-key", "old-key")
