"""Registering a backend and asking for its health check: the one code path `labdesk backends add` and
the admin console's Backends page share, so a config the CLI refuses is refused in the browser too.

A backend's settings are validated by building its connector (each connector's parser names the key at
fault) before anything is stored; its credentials are sealed with the vault and never leave it except
into a connector's memory. Building a connector does not call the backend: the health check that does
runs as a job on the backend's own queue (the web never calls a backend, docs/architecture.md).
"""

from __future__ import annotations

import json
import re
import secrets as std_secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import select

from broker import audit, schedule
from broker.dispatch import JobRequest
from broker.errors import LabDeskError
from broker.models import Backend
from broker.registry import connector_class
from broker.runtime import Runtime

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InvalidBackendInput(LabDeskError):
    """What an admin typed for a new backend cannot be used; `field` is the input at fault
    ("name", "config" or "secrets") so a form or a CLI option can point at it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


class BackendExists(LabDeskError):
    """A backend of that name is registered already."""


@dataclass(frozen=True)
class Health:
    """The last health check's answer for one backend, as the scheduled or requested check recorded it."""

    ok: bool
    at: float


def parse_config(text: str) -> dict[str, Any]:
    """The non-secret settings: a JSON object (blank means none)."""
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidBackendInput("config", f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidBackendInput("config", "must be a JSON object")
    return config


def parse_secrets(pairs: Iterable[str]) -> dict[str, str]:
    """KEY=VALUE credentials (the value may hold '='); blank entries are skipped, so a textarea's
    empty lines do not count."""
    values: dict[str, str] = {}
    for pair in pairs:
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidBackendInput("secrets", f"expected KEY=VALUE, got {_masked(pair)!r}")
        values[key.strip()] = value
    return values


def _masked(pair: str) -> str:
    """A bad secret line shown without its value: an error message must not echo a credential."""
    return pair if len(pair) <= 4 else pair[:2] + "…"


def register(
    rt: Runtime, name: str, kind: str, config: dict[str, Any], secrets: dict[str, str], *, actor: str, address: str = ""
) -> Backend:
    """Validate by building the connector, then store the backend with its secrets sealed, audited.

    A `credential_seed` is generated unless given: connectors derive each lab's passwords and keys from it
    (connectors/credentials.py). Raises InvalidBackendInput, UnknownBackend, ConfigError (naming the key)
    or BackendExists, and stores nothing then."""
    if not NAME.match(name):
        raise InvalidBackendInput("name", "a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    cls = connector_class(kind)
    sealed = dict(secrets)
    sealed.setdefault("credential_seed", std_secrets.token_urlsafe(32))
    cls(name, {**config, **sealed})  # refuses bad settings now, with its message
    with rt.session() as session:
        if session.scalar(select(Backend.id).where(Backend.name == name)) is not None:
            raise BackendExists(f"a backend named '{name}' already exists")
        backend = Backend(name=name, kind=kind, config=config, secrets=rt.vault.seal(sealed))
        session.add(backend)
        keys = ", ".join(sorted(secrets)) or "none given"
        generated = "" if "credential_seed" in secrets else " (+ a generated credential_seed)"
        audit.record(session, actor, "backend.add", target=f"backend:{name}",
                     detail=f"kind {kind}; secret keys: {keys}{generated}", address=address)
        session.commit()
        session.refresh(backend)
        session.expunge(backend)
        return backend


def request_check(rt: Runtime, name: str, *, actor: str, address: str = "") -> bool:
    """Enqueue the health check for one backend on its own queue, audited; False when one requested in
    the same second is still queued (the ids match), so a double click queues one check."""
    with rt.session() as session:
        backend = session.scalar(select(Backend).where(Backend.name == name))
        if backend is None:
            raise LabDeskError(f"no backend named '{name}'")
        queued = rt.dispatcher.enqueue(JobRequest(
            backend.queue_name, f"health-{backend.id}-admin-{int(time.time())}", schedule.check_backend_job, (backend.id,)
        ))
        audit.record(session, actor, "backend.check", target=f"backend:{name}",
                     detail="health check queued" if queued else "a health check is queued already", address=address)
        session.commit()
    return queued


def last_health(rt: Runtime) -> dict[str, Health]:
    """Each backend's last recorded health check (scheduled, requested or `labdesk backends check`)."""
    recorded = rt.redis.hgetall(schedule.HEALTH_KEY)
    return {k.decode(): Health(bool(v["ok"]), float(v["at"])) for k, v in
            ((key, json.loads(value)) for key, value in recorded.items())}
