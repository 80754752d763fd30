"""Registering, editing and removing a backend, and asking for its health check: the one code path the
`labdesk backends` commands and the admin console's Backends page share, so a config the CLI refuses is
refused in the browser too.

A backend's settings are validated by building its connector (each connector's parser names the key at
fault) before anything is stored; its credentials are sealed with the vault and never leave it except
into a connector's memory. Building a connector does not call the backend: the health check that does
runs as a job on the backend's own queue (the web never calls a backend, docs/architecture.md).

An edit replaces the config and changes secrets one name at a time: running labs keep running, and every
new operation (a worker builds the connector afresh when the row changes, broker.runtime) uses the new
settings. A backend is removed only when no activity and no lab names it, so the row goes with its sealed
secrets and no history is lost.
"""

from __future__ import annotations

import json
import re
import secrets as std_secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable

from redis.exceptions import RedisError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import audit, schedule
from broker.backend_ops import HOLDING
from broker.dispatch import JobRequest
from broker.errors import LabDeskError, ServiceUnavailable
from broker.models import ENDED_STATES, Activity, Backend, Course, GpuSlot, Lab
from broker.registry import connector_class
from broker.runtime import Runtime

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SEED = "credential_seed"  # connectors derive each lab's passwords and keys from it (connectors/credentials.py)


class InvalidBackendInput(LabDeskError):
    """What an admin typed for a new backend cannot be used; `field` is the input at fault
    ("name", "config" or "secrets") so a form or a CLI option can point at it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


class BackendExists(LabDeskError):
    """A backend of that name is registered already."""


class NoSuchBackend(LabDeskError):
    """No backend of that name is registered."""


class BackendInUse(LabDeskError):
    """A backend that activities or labs still use cannot be removed; the message says which."""


@dataclass(frozen=True)
class SecretChanges:
    """What an edit does to the sealed secrets: new values by name (new names included) and names to drop;
    every other secret is kept as it is."""

    replace: dict[str, str]
    remove: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Usage:
    """What still uses a backend: its labs not yet gone, and the activities (with their course) placed on it."""

    live_labs: int
    ended_labs: int
    activities: list[str]

    @property
    def in_use(self) -> bool:
        return bool(self.live_labs or self.ended_labs or self.activities)

    def reason(self) -> str:
        """Why it cannot be removed, e.g. "2 live labs; 1 activity uses it: Networking lab (Course A)"."""
        parts = []
        if self.live_labs:
            parts.append(f"{self.live_labs} live lab{'s' if self.live_labs != 1 else ''}")
        if self.activities:
            shown = ", ".join(self.activities[:10]) + (f" and {len(self.activities) - 10} more" if len(self.activities) > 10 else "")
            parts.append(f"{len(self.activities)} activit{'ies use' if len(self.activities) != 1 else 'y uses'} it: {shown}")
        if self.ended_labs and not self.activities:
            parts.append(f"the history of {self.ended_labs} ended lab{'s' if self.ended_labs != 1 else ''} names it")
        return "; ".join(parts)


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


def config_of(rt: Runtime, name: str) -> dict[str, Any]:
    """The backend's config as stored (no secrets in it), for an edit that keeps it."""
    with rt.session() as session:
        return dict(_backend(session, name).config)


def secret_names(rt: Runtime, name: str) -> list[str]:
    """The names of a backend's sealed secrets (never their values), for the edit form and the CLI."""
    with rt.session() as session:
        return sorted(rt.vault.open(_backend(session, name).secrets))


def edit(
    rt: Runtime, name: str, config: dict[str, Any], changes: SecretChanges, *, actor: str, address: str = ""
) -> str:
    """Replace the backend's config and change its secrets as asked, validated by building its connector
    with the result exactly as `register` does; store and audit it, and return what changed (names only).

    Raises NoSuchBackend, InvalidBackendInput ("secrets": a name both replaced and removed, removed but not
    set, or the credential seed touched unsafely) or ConfigError (naming the key), and changes nothing then."""
    with rt.session() as session:
        backend = _backend(session, name, lock=True)  # two edits at once: the second reads the first's secrets
        current = rt.vault.open(backend.secrets)
        _check_secret_changes(session, backend, current, changes)
        merged = {k: v for k, v in current.items() if k not in changes.remove} | changes.replace
        connector_class(backend.kind)(name, {**config, **merged})  # refuses bad settings now, with its message
        summary = _edit_summary(backend.config, config, current, changes)
        backend.config = config
        backend.secrets = rt.vault.seal(merged)
        audit.record(session, actor, "backend.edit", target=f"backend:{name}", detail=summary, address=address)
        session.commit()
    return summary


def _check_secret_changes(session: Session, backend: Backend, current: dict[str, Any], changes: SecretChanges) -> None:
    both = sorted(changes.remove & set(changes.replace))
    if both:
        raise InvalidBackendInput("secrets", f"{both[0]}: give it a new value or remove it, not both")
    unknown = sorted(changes.remove - set(current))
    if unknown:
        raise InvalidBackendInput("secrets", f"{unknown[0]}: no such secret is set")
    if SEED in changes.remove:
        raise InvalidBackendInput("secrets", f"{SEED}: cannot be removed; labs' passwords and keys are derived from it")
    if SEED in changes.replace and changes.replace[SEED] != current.get(SEED) and _holding(session, backend.id):
        raise InvalidBackendInput(
            "secrets", f"{SEED}: can be replaced only while the backend holds no labs (their passwords and keys come from it)"
        )


def _edit_summary(before: dict[str, Any], after: dict[str, Any], current: dict[str, Any], changes: SecretChanges) -> str:
    """What an edit changed, for the audit log and the admin: config keys and secret names, no values."""
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, _ABSENT) != after.get(k, _ABSENT))
    replaced = sorted(k for k in changes.replace if k in current)
    added = sorted(k for k in changes.replace if k not in current)
    parts = [f"config keys changed: {', '.join(changed)}" if changed else "config unchanged"]
    parts += [f"secrets {label}: {', '.join(names)}" for label, names in
              (("replaced", replaced), ("added", added), ("removed", sorted(changes.remove))) if names]
    if not (replaced or added or changes.remove):
        parts.append("secrets kept")
    return "; ".join(parts)


_ABSENT = object()


def usage(rt: Runtime, name: str) -> Usage:
    """What still uses the backend, as the remove confirmation shows it."""
    with rt.session() as session:
        return _usage(session, _backend(session, name))


def remove(rt: Runtime, name: str, *, actor: str, address: str = "") -> None:
    """Delete the backend's row, its sealed secrets with it, once nothing uses it; audited.

    Refused with BackendInUse (naming the live labs and the activities) while any activity or lab names
    it. Its GPU inventory goes too, and its last health check is forgotten."""
    with rt.session() as session:
        backend = _backend(session, name, lock=True)
        found = _usage(session, backend)
        if found.in_use:
            raise BackendInUse(f"{name} is in use: {found.reason()}")
        kind = backend.kind
        session.execute(delete(GpuSlot).where(GpuSlot.backend_id == backend.id))
        session.delete(backend)
        audit.record(session, actor, "backend.remove", target=f"backend:{name}",
                     detail=f"kind {kind}; its sealed secrets are deleted", address=address)
        try:
            session.commit()
        except IntegrityError:  # a row of another kind names it; keep everything as it was
            session.rollback()
            raise BackendInUse(f"{name} is in use: other records still refer to it") from None
    try:
        rt.redis.hdel(schedule.HEALTH_KEY, name)
    except RedisError:
        pass  # only a remembered health check; a backend added later under this name overwrites it


def _usage(session: Session, backend: Backend) -> Usage:
    counts = dict(session.execute(
        select(Lab.state, func.count()).where(Lab.backend_id == backend.id).group_by(Lab.state)
    ).all())
    activities = session.execute(
        select(Activity.title, Course.title).join(Course, Activity.course_id == Course.id)
        .where(Activity.backend_id == backend.id).order_by(Course.title, Activity.title)
    ).all()
    return Usage(
        live_labs=sum(n for state, n in counts.items() if state not in ENDED_STATES or state == "deleting"),
        ended_labs=sum(n for state, n in counts.items() if state in ENDED_STATES and state != "deleting"),
        activities=[f"{title} ({course})" for title, course in activities],
    )


def _holding(session: Session, backend_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Lab).where(Lab.backend_id == backend_id, Lab.state.in_(HOLDING))) or 0


def _backend(session: Session, name: str, lock: bool = False) -> Backend:
    """The backend's row; with `lock`, held (`SELECT … FOR UPDATE` on PostgreSQL) until the caller commits."""
    query = select(Backend).where(Backend.name == name)
    backend = session.scalar(query.with_for_update() if lock else query)
    if backend is None:
        raise NoSuchBackend(f"no backend named '{name}'")
    return backend


def request_check(rt: Runtime, name: str, *, actor: str, address: str = "") -> bool:
    """Enqueue the health check for one backend on its own queue, audited; False when one requested in
    the same second is still queued (the ids match), so a double click queues one check."""
    with rt.session() as session:
        backend = session.scalar(select(Backend).where(Backend.name == name))
        if backend is None:
            raise LabDeskError(f"no backend named '{name}'")
        try:
            queued = rt.dispatcher.enqueue(JobRequest(
                backend.queue_name, f"health-{backend.id}-admin-{int(time.time())}", schedule.check_backend_job, (backend.id,)
            ))
        except RedisError as exc:
            raise ServiceUnavailable(f"the job queue is unavailable, so no check was queued: Redis cannot be reached ({exc})") from exc
        audit.record(session, actor, "backend.check", target=f"backend:{name}",
                     detail="health check queued" if queued else "a health check is queued already", address=address)
        session.commit()
    return queued


def last_health(rt: Runtime) -> dict[str, Health]:
    """Each backend's last recorded health check (scheduled, requested or `labdesk backends check`)."""
    recorded = rt.redis.hgetall(schedule.HEALTH_KEY)
    return {k.decode(): Health(bool(v["ok"]), float(v["at"])) for k, v in
            ((key, json.loads(value)) for key, value in recorded.items())}
