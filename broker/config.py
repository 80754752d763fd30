"""Typed settings, read from a TOML file and `LABDESK_*` environment variables, checked at start.

Precedence: built-in defaults < the TOML file (`LABDESK_CONFIG`, else `./labdesk.toml` if present) <
environment variables (`LABDESK_<KEY>` upper-cased). Anything invalid stops the start with a message that
names the key and says what was expected, so an admin never meets a half-configured broker at run time.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from broker.errors import ConfigError

ENV_PREFIX = "LABDESK_"


@dataclass(frozen=True)
class Settings:
    """Every setting LabDesk reads. Durations are seconds unless the name says otherwise."""

    data_dir: str = "var"
    database_url: str = ""  # empty: SQLite file in data_dir
    redis_url: str = "redis://127.0.0.1:6379/0"
    secret_key: str = ""  # empty: generated once into data_dir
    encryption_keys: tuple[str, ...] = ()  # Fernet keys, newest first; empty: generated into data_dir
    public_url: str = "http://127.0.0.1:8000"
    dev_login: bool = True
    default_backend: str = "local"
    # Idle economics (defaults for new activities; each activity may override).
    keepalive_interval: int = 30
    presence_batch_ms: int = 200  # keepalives reach Redis in batches this often; 0: one write per request
    idle_suspend_after: int = 120
    leave_grace: int = 20
    page_idle_disconnect: int = 240
    reap_after_days: int = 14
    # Sweeps.
    sweep_interval: int = 15
    reap_interval: int = 3600
    reconcile_interval: int = 300
    health_interval: int = 60
    grading_due_interval: int = 60  # the sweep that starts deadline checks (activities' auto_check)
    usage_limit_interval: int = 60  # the sweep that suspends labs over their activity's weekly hours (docs/limits.md)
    orphan_grace: int = 600
    sweep_batch: int = 5000
    # How long a lab may stay in an in-progress state before the deadline sweep acts.
    requested_deadline: int = 600
    provisioning_deadline: int = 900
    suspending_deadline: int = 300
    resuming_deadline: int = 300
    deleting_deadline: int = 600
    max_recoveries: int = 2
    poll_interval: int = 2
    max_transient_retries: int = 8
    # GPU queue (docs/gpus.md).
    gpu_per_learner: int = 1  # GPUs one learner may hold at once; further GPU labs wait their turn
    gpu_typical_hold: int = 1800  # the wait estimate's guess of a GPU session until there is history
    gpu_interval: int = 30  # the GPU sweep: release what ended labs hold, start who is next
    class_session_interval: int = 60  # the class-session warm-up: start the labs of sessions whose warm-up time has come
    # LTI 1.3 (docs/lti.md).
    tool_name: str = "LabDesk"
    emulator: bool = True  # the built-in LMS emulator at /emulator; development and demo only
    open_registration: bool = False  # Dynamic Registration without an invitation (labdesk platforms invite)
    emulator_url: str = ""  # the emulator's issuer and base URL; empty: public_url + "/emulator"
    proxy_hops: int = 0  # TLS-terminating proxies in front of the web that set X-Forwarded-*; 0: none
    lti_leeway: int = 30  # clock skew allowed on exp/iat
    lti_token_max_age: int = 300  # an id_token issued longer ago than this is refused
    lti_login_ttl: int = 600  # how long a login (state + nonce) waits for its launch
    lti_http_timeout: int = 5  # every call to a platform (JWKS, token, AGS, NRPS, registration)
    jwks_cache_seconds: int = 300
    outbox_interval: int = 30  # the grade outbox sweep
    outbox_give_up_after: int = 7 * 24 * 3600  # a score still undelivered after this is marked failed
    # Desktop streaming (docs/desktop.md).
    tunnel_listen: str = "127.0.0.1:8001"  # where `labdesk tunnel` listens
    tunnel_url: str = ""  # the tunnel as browsers reach it; empty: public_url's host, tunnel_listen's port, /tunnel
    guacd_hosts: tuple[str, ...] = ("127.0.0.1:4822",)  # host:port of each guacd
    guacd_check_interval: int = 10  # health check of each guacd
    tunnel_token_ttl: int = 60  # a connection token is single use and valid this long (at most 60)
    tunnel_max_connections: int = 4000  # per tunnel process; more are refused with "server busy"
    # Take-away bundles (docs/takeaway.md).
    takeaway_work_limit_mb: int = 32  # the learner's work folder, read as base64 of its tar.gz, at most this many MiB
    # Admin console (docs/admin.md).
    admin_oidc_issuer: str = ""  # the institution's OpenID Connect issuer; empty: password sign-in only
    admin_oidc_client_id: str = ""
    admin_oidc_client_secret: str = field(default="", repr=False)  # from the TOML file or the environment; never shown
    admin_oidc_name: str = "your institution"  # "Sign in with <name>"
    admin_oidc_allowed: tuple[str, ...] = ()  # verified emails or @domains that may become admins; empty: existing admins only
    admin_session_max_age: int = 8 * 3600  # an admin signs in again after this long, whatever they do
    admin_session_idle: int = 3600  # ... or after this long without a request
    admin_login_attempts: int = 5  # failed password sign-ins per username and address ...
    admin_login_window: int = 900  # ... within this many seconds, then sign-in is refused until it passes

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'labdesk.sqlite3'}"


# Whole-number settings where 0 means "off"; every other one must be positive.
_ZERO_ALLOWED = {"presence_batch_ms", "proxy_hops"}


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated settings from defaults, the TOML file, the environment and explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = path or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_path is None and Path("labdesk.toml").exists():
        config_path = "labdesk.toml"
    if config_path:
        values.update(_read_toml(Path(config_path)))
    values.update(_from_environ(environ))
    values.update({key: (value, key) for key, value in (overrides or {}).items()})
    return _build(values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return {key: (value, f"{path}: {key}") for key, value in data.items()}


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    known = {f.name for f in fields(Settings)}
    found: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key in known:
            found[key] = (raw, name)
    return found


def _build(values: Mapping[str, tuple[Any, str]]) -> Settings:
    """Settings from `key: (value, where it came from)` pairs; the origin names the key in errors."""
    known = {f.name: f for f in fields(Settings)}
    converted: dict[str, Any] = {}
    for key, (value, origin) in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting '{key}'")
        converted[key] = _convert(known[key], value, origin)
    settings = dataclasses.replace(Settings(), **converted)
    _check_desktop(settings)
    _check_admin_oidc(settings)
    return settings


def _check_desktop(settings: Settings) -> None:
    """The tunnel's settings, checked here so a typo stops `labdesk run`, not the first learner."""
    if settings.tunnel_token_ttl > 60:
        raise ConfigError(f"tunnel_token_ttl: at most 60 seconds, got {settings.tunnel_token_ttl}")
    if not settings.guacd_hosts:
        raise ConfigError("guacd_hosts: name at least one guacd as host:port")
    for entry in (*settings.guacd_hosts, settings.tunnel_listen):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            which = "tunnel_listen" if entry == settings.tunnel_listen else "guacd_hosts"
            raise ConfigError(f"{which}: expected host:port, got {entry!r}")
    if settings.tunnel_url and not settings.tunnel_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"tunnel_url: expected a ws:// or wss:// URL, got {settings.tunnel_url!r}")


def _check_admin_oidc(settings: Settings) -> None:
    """An issuer without its client (or the reverse) is a half-configured sign-in: refuse it at start."""
    oidc = (settings.admin_oidc_issuer, settings.admin_oidc_client_id, settings.admin_oidc_client_secret)
    if any(oidc) and not all(oidc):
        raise ConfigError("admin_oidc_issuer, admin_oidc_client_id and admin_oidc_client_secret: set all three or none")
    if settings.admin_oidc_issuer and not settings.admin_oidc_issuer.startswith(("https://", "http://")):
        raise ConfigError(f"admin_oidc_issuer: expected an https:// URL, got {settings.admin_oidc_issuer!r}")


def _convert(spec: dataclasses.Field[Any], value: Any, origin: str) -> Any:
    """Coerce one value to its field's type, or raise ConfigError naming where it came from."""
    kind = spec.type
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            number = int(value)
            if number < 0 or (number == 0 and spec.name not in _ZERO_ALLOWED):
                raise ValueError
            return number
        if kind == "bool":
            return _to_bool(value)
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        return value
    except (TypeError, ValueError):
        expected = {"int": "a positive whole number", "bool": "true or false"}.get(kind, kind)
        raise ConfigError(f"{origin}: expected {expected}, got {value!r}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
