"""Heat providers (clouds or projects a Heat backend deploys to) and the clients that talk to them.

A backend lists its providers in order under `providers`; a backend without that list is one provider
named "default" configured by its top-level keys. Top-level keys are defaults for every provider, so
settings shared by all (a region, a CA bundle) are written once. Credentials come from the backend's
encrypted secrets: a secret `password` applies to every provider, `<provider>.password` to one. A
provider's own `parameters` (its network, image and flavor names) win over the backend's.

Authentication is one of: a Keystone `auth_url` with a user `password`, a Keystone `auth_url` with an
application credential, or a fixed `endpoint` + `token` (a cloud behind a gateway, and the tests'
standalone Heat). Every HTTP call has the backend's `call_timeout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from heatclient.v1 import client as heat_v1  # the v1 API directly: imported once, before workers fork
from keystoneauth1 import session, token_endpoint
from keystoneauth1.identity import v3

from broker.errors import ConfigError

AUTH_KEYS = (
    "auth_url", "username", "password", "user_id", "project_name", "project_id", "user_domain_name",
    "project_domain_name", "application_credential_id", "application_credential_name",
    "application_credential_secret", "endpoint", "token",
)
PROVIDER_KEYS = (*AUTH_KEYS, "name", "capacity", "region", "interface", "verify", "cacert", "parameters")
INTERFACES = ("public", "internal", "admin")
UNLIMITED = -1


@dataclass(frozen=True)
class Provider:
    """One place stacks can be created, with how many it may hold (-1 unlimited, 0 disabled)."""

    name: str
    capacity: int = UNLIMITED
    auth: Mapping[str, str] = field(default_factory=dict)
    region: str | None = None
    interface: str = "public"
    verify: bool | str = True
    parameters: Mapping[str, Any] = field(default_factory=dict)  # this cloud's names (network, image, flavor)

    @property
    def auth_kind(self) -> str:
        if self.auth.get("endpoint") or self.auth.get("token"):
            return "token"
        if any(key.startswith("application_credential_") for key in self.auth):
            return "application_credential"
        return "password"

    def has_room(self, stacks: int) -> bool:
        return self.capacity == UNLIMITED or stacks < self.capacity


def parse_providers(config: Mapping[str, Any]) -> list[Provider]:
    """The backend's providers in order, or ConfigError naming the key at fault."""
    listed = config.get("providers") or [{"name": "default"}]
    if not isinstance(listed, list) or not all(isinstance(p, Mapping) for p in listed):
        raise ConfigError("heat backend: providers: expected a list of tables")
    shared = {key: config[key] for key in PROVIDER_KEYS if key in config and key not in ("name", "parameters")}
    providers = [_provider(config, shared, raw, index) for index, raw in enumerate(listed)]
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise ConfigError(f"heat backend: providers: names repeat: {names}")
    return providers


def _provider(config: Mapping[str, Any], shared: Mapping[str, Any], raw: Mapping[str, Any], index: int) -> Provider:
    name = str(raw.get("name") or f"provider-{index + 1}")
    where = f"heat backend: providers[{index}] ({name})"
    unknown = sorted(set(raw) - set(PROVIDER_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {', '.join(PROVIDER_KEYS)})")
    secrets = {key.split(".", 1)[1]: value for key, value in config.items() if key.startswith(f"{name}.")}
    merged = {**shared, **raw, **secrets}
    auth = {key: str(merged[key]) for key in AUTH_KEYS if merged.get(key) not in (None, "")}
    provider = Provider(
        name=name,
        capacity=_capacity(merged.get("capacity", UNLIMITED), where),
        auth=auth,
        region=merged.get("region") or None,
        interface=_interface(merged.get("interface", "public"), where),
        verify=merged.get("cacert") or bool(merged.get("verify", True)),
        parameters=_parameters(raw.get("parameters", {}), where),
    )
    _check_auth(provider, where)
    return provider


def _capacity(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
        raise ConfigError(f"{where}: capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got {value!r}")
    return value


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: parameters: expected a table of template parameters, got {value!r}")
    return dict(value)


def _interface(value: Any, where: str) -> str:
    if value not in INTERFACES:
        raise ConfigError(f"{where}: interface: expected one of {', '.join(INTERFACES)}, got {value!r}")
    return str(value)


def _check_auth(provider: Provider, where: str) -> None:
    auth = provider.auth
    if provider.auth_kind == "token":
        missing = [key for key in ("endpoint", "token") if not auth.get(key)]
    elif provider.auth_kind == "application_credential":
        missing = [] if auth.get("application_credential_id") or auth.get("application_credential_name") else ["application_credential_id"]
        missing += [key for key in ("auth_url", "application_credential_secret") if not auth.get(key)]
        if auth.get("application_credential_name") and not auth.get("application_credential_id"):
            missing += [] if auth.get("username") or auth.get("user_id") else ["username"]  # a name is per user
    else:
        missing = [key for key in ("auth_url", "password") if not auth.get(key)]
        missing += [] if auth.get("username") or auth.get("user_id") else ["username"]
        missing += [] if auth.get("project_name") or auth.get("project_id") else ["project_name"]
    if missing:
        raise ConfigError(f"{where}: {provider.auth_kind} authentication needs {', '.join(missing)}")


def keystone_session(provider: Provider, timeout: float) -> Any:
    """A keystoneauth1 session for the provider; each request made through it times out after `timeout` s."""
    auth = provider.auth
    if provider.auth_kind == "token":
        plugin: Any = token_endpoint.Token(auth["endpoint"], auth["token"])
    elif provider.auth_kind == "application_credential":
        plugin = v3.ApplicationCredential(**_default_domains(_only(auth, (
            "auth_url", "application_credential_id", "application_credential_name",
            "application_credential_secret", "username", "user_id", "user_domain_name"))))
    else:
        plugin = v3.Password(**_default_domains(_only(auth, (
            "auth_url", "username", "user_id", "password", "project_name", "project_id",
            "user_domain_name", "project_domain_name"))))
    return session.Session(auth=plugin, timeout=timeout, verify=provider.verify)


def _only(auth: Mapping[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    return {key: auth[key] for key in keys if key in auth}


def _default_domains(options: dict[str, str]) -> dict[str, str]:
    """Keystone v3 needs domains with names; "Default" is what nearly every cloud uses.

    Given to the plugin's constructor: the user's domain belongs to the plugin's auth method, so an
    attribute set on the plugin afterwards would never reach Keystone.
    """
    if "username" in options and "user_domain_name" not in options:
        options["user_domain_name"] = "Default"
    if "project_name" in options and "project_domain_name" not in options:
        options["project_domain_name"] = "Default"
    return options


def heat_client(provider: Provider, timeout: float) -> Any:
    """A python-heatclient v1 client on the provider's session (region and interface as configured)."""
    options: dict[str, Any] = {"interface": provider.interface}
    if provider.region:
        options["region_name"] = provider.region
    if provider.auth_kind == "token":
        options["endpoint_override"] = provider.auth["endpoint"]
    return heat_v1.Client(session=keystone_session(provider, timeout), **options)
