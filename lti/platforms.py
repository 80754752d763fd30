"""Platform registrations: which LMSs may launch LabDesk, with which client ids and deployments.

Managed by `labdesk platforms …`, by the admin console's Platforms section, by Dynamic Registration and (in
development) by the emulator. Every way in goes through `validate`, so a registration is refused for the
same reason, in the same words, whichever way it came. Changes made by a person name them (`actor`) and
are audited in the same transaction. Launches look registrations up on every request, so the lookup is
one indexed query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import audit
from broker.errors import LabDeskError
from broker.models import Activity, ScoreOutbox
from broker.runtime import Runtime
from lti.models import Deployment, LinkServices, Platform


class RegistrationError(LabDeskError):
    """A platform registration is missing, duplicated or malformed."""


class InvalidPlatformInput(RegistrationError):
    """One value of a registration is refused; `field` names it (as PlatformInfo does) so a form can mark it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PlatformExists(InvalidPlatformInput):
    """Another registration has this issuer and client id (the pair launches are looked up by)."""

    def __init__(self, issuer: str, client_id: str, other: str = "") -> None:
        super().__init__("client_id", f"platform {issuer} with client id {client_id} is already registered{other}")


# What people call each value; the CLI passes its option names instead (`--issuer`).
LABELS: Mapping[str, str] = {
    "issuer": "Issuer", "client_id": "Client ID", "auth_login_url": "Auth login URL", "auth_token_url": "Token URL",
    "key_set_url": "Key set URL", "auth_audience": "Audience", "deployments": "Deployment ID", "name": "Name",
}
URL_FIELDS = ("auth_login_url", "auth_token_url", "key_set_url")
# The columns' widths (lti.models): longer values are refused here rather than by the database.
MAX_LENGTH = {"issuer": 255, "client_id": 255, "name": 255, "deployments": 255, "auth_audience": 1024,
              **{key: 1024 for key in URL_FIELDS}}


@dataclass(frozen=True)
class PlatformInfo:
    """What a launch needs to know about a registration (detached from any database session)."""

    id: int
    issuer: str
    client_id: str
    name: str
    auth_login_url: str
    auth_token_url: str
    key_set_url: str
    auth_audience: str
    accept_new_deployments: bool
    deployments: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, row: Platform) -> "PlatformInfo":
        return cls(
            id=row.id, issuer=row.issuer, client_id=row.client_id, name=row.name,
            auth_login_url=row.auth_login_url, auth_token_url=row.auth_token_url, key_set_url=row.key_set_url,
            auth_audience=row.auth_audience, accept_new_deployments=row.accept_new_deployments,
            deployments=tuple(d.deployment_id for d in row.deployments),
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "deployments": list(self.deployments)}


_INFO_COLUMNS = tuple(f.name for f in fields(PlatformInfo) if f.name != "deployments")


# -- validation -----------------------------------------------------------------------------------------
def validate(values: Mapping[str, Any], names: Mapping[str, str] = LABELS) -> None:
    """Refuse, at the first problem and naming its field, what launches could not use: an issuer must be an
    http(s) URL with a host and no query or fragment (launches carry it exactly); the three endpoints, and
    the audience when given, http(s) URLs with a host; the client id and every deployment id not empty."""
    check_url("issuer", values["issuer"], names, issuer=True)
    if not str(values["client_id"]).strip():
        raise InvalidPlatformInput("client_id", f"{names['client_id']} must not be empty (the client id the LMS gave LabDesk)")
    _check_length("client_id", values["client_id"], names)
    for key in URL_FIELDS:
        check_url(key, values[key], names)
    if values.get("auth_audience"):
        check_url("auth_audience", values["auth_audience"], names)
    for deployment_id in values.get("deployments") or ():
        check_deployment_id(deployment_id, names["deployments"])
    _check_length("name", values.get("name") or "", names)


def check_url(key: str, value: str, names: Mapping[str, str] = LABELS, issuer: bool = False) -> None:
    """A URL an LMS admin pasted: http(s), with a host (and a port that is a number), no credentials or
    spaces; an issuer also without query or fragment."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc or any(c.isspace() for c in value):
        raise InvalidPlatformInput(key, f"{names[key]} must be an http(s) URL with a host, got {value!r}")
    if issuer and (parts.query or parts.fragment):
        raise InvalidPlatformInput(key, f"{names[key]} must have no query or fragment, got {value!r}")
    _check_length(key, value, names)


def check_deployment_id(deployment_id: str, name: str = LABELS["deployments"]) -> None:
    if not deployment_id.strip():
        raise InvalidPlatformInput("deployments", f"{name} must not be empty")
    if len(deployment_id) > MAX_LENGTH["deployments"]:
        raise InvalidPlatformInput("deployments", f"{name} is longer than {MAX_LENGTH['deployments']} characters")


def _check_length(key: str, value: str, names: Mapping[str, str]) -> None:
    if len(value) > MAX_LENGTH[key]:
        raise InvalidPlatformInput(key, f"{names[key]} is longer than {MAX_LENGTH[key]} characters")


# -- changes --------------------------------------------------------------------------------------------
def add(
    rt: Runtime, issuer: str, client_id: str, auth_login_url: str, auth_token_url: str, key_set_url: str,
    deployments: Iterable[str] = (), name: str = "", auth_audience: str = "",
    accept_new_deployments: bool = False, replace: bool = False, *, actor: str = "", address: str = "",
) -> PlatformInfo:
    """Register a platform (or, with `replace`, update the one with that issuer and client id); audited
    as `platform.add` when a person (`actor`) asked."""
    deployments = list(dict.fromkeys(deployments))
    values = dict(issuer=issuer, client_id=client_id, auth_login_url=auth_login_url, auth_token_url=auth_token_url,
                  key_set_url=key_set_url, auth_audience=auth_audience, name=name, deployments=deployments)
    validate(values)
    with rt.session() as session:
        row = _by_pair(session, issuer, client_id)
        if row is not None and not replace:
            raise PlatformExists(issuer, client_id)
        if row is None:
            row = Platform(issuer=issuer, client_id=client_id)
            session.add(row)
        _set(row, values, accept_new_deployments)
        known = {d.deployment_id for d in row.deployments}
        row.deployments.extend(Deployment(deployment_id=d) for d in deployments if d not in known)
        _flush(session, issuer, client_id)
        if actor:
            audit.record(session, actor, "platform.add", target=f"platform:{row.id}", address=address,
                         detail=f"{row.name}: issuer {issuer}, client id {client_id}, deployments "
                                f"{', '.join(deployments) or 'none'}{', accepts new ones' if accept_new_deployments else ''}")
        session.commit()
        _changed()
        return PlatformInfo.of(row)


def update(
    rt: Runtime, platform_id: int, *, issuer: str, client_id: str, auth_login_url: str, auth_token_url: str,
    key_set_url: str, name: str = "", auth_audience: str = "", accept_new_deployments: bool = False,
    actor: str = "", address: str = "",
) -> PlatformInfo:
    """Change a registration's values (its deployments change with `allow_deployment` and
    `remove_deployment`). Moving it onto the issuer and client id of another registration is refused."""
    values = dict(issuer=issuer, client_id=client_id, auth_login_url=auth_login_url, auth_token_url=auth_token_url,
                  key_set_url=key_set_url, auth_audience=auth_audience, name=name)
    validate(values)
    with rt.session() as session:
        row = _row(session, platform_id)
        other = _by_pair(session, issuer, client_id)
        if other is not None and other.id != platform_id:
            raise PlatformExists(issuer, client_id, f" as platform {other.id} ({other.name}); change that one instead")
        before = {key: getattr(row, key) for key in (*values, "accept_new_deployments")}
        _set(row, values, accept_new_deployments)
        changed = [key for key, value in before.items() if getattr(row, key) != value]
        _flush(session, issuer, client_id)
        if actor:
            audit.record(session, actor, "platform.update", target=f"platform:{platform_id}", address=address,
                         detail=f"{row.name}: " + (f"changed {', '.join(changed)}" if changed else "nothing changed"))
        session.commit()
        _changed()
        return PlatformInfo.of(row)


def _set(row: Platform, values: Mapping[str, Any], accept_new_deployments: bool) -> None:
    for key in ("issuer", "client_id", "auth_audience", *URL_FIELDS):
        setattr(row, key, values[key])
    row.name = values["name"] or values["issuer"]
    row.accept_new_deployments = accept_new_deployments


def _flush(session: Session, issuer: str, client_id: str) -> None:
    """Write the row (a new one gets its id); a concurrent registration of the same pair is a duplicate."""
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise PlatformExists(issuer, client_id) from None


def allow_deployment(
    rt: Runtime, platform_id: int, deployment_id: str, *, name: str = LABELS["deployments"], actor: str = "", address: str = "",
) -> PlatformInfo:
    """Let one more deployment of a platform launch (an admin's choice; launches use `add_deployment`)."""
    deployment_id = deployment_id.strip()
    check_deployment_id(deployment_id, name)
    with rt.session() as session:
        row = _row(session, platform_id)
        if deployment_id in {d.deployment_id for d in row.deployments}:
            raise InvalidPlatformInput("deployments", f"platform {platform_id} already has deployment {deployment_id!r}")
        row.deployments.append(Deployment(deployment_id=deployment_id))
        if actor:
            audit.record(session, actor, "platform.deployment_add", target=f"platform:{platform_id}",
                         detail=f"{row.name}: deployment {deployment_id}", address=address)
        try:
            session.commit()
        except IntegrityError:  # added by a concurrent launch or admin
            session.rollback()
            raise InvalidPlatformInput("deployments", f"platform {platform_id} already has deployment {deployment_id!r}") from None
        _changed()
        return PlatformInfo.of(row)


def remove_deployment(rt: Runtime, platform_id: int, deployment_id: str, *, actor: str = "", address: str = "") -> PlatformInfo:
    """Refuse further launches from one deployment (unless the platform accepts new ones, which records it again)."""
    with rt.session() as session:
        row = _row(session, platform_id)
        found = next((d for d in row.deployments if d.deployment_id == deployment_id), None)
        if found is None:
            raise RegistrationError(f"platform {platform_id} has no deployment {deployment_id!r}")
        row.deployments.remove(found)
        if actor:
            audit.record(session, actor, "platform.deployment_remove", target=f"platform:{platform_id}",
                         detail=f"{row.name}: deployment {deployment_id}", address=address)
        session.commit()
        _changed()
        return PlatformInfo.of(row)


def add_deployment(rt: Runtime, platform_id: int, deployment_id: str) -> None:
    """Record a deployment id at the first launch from a platform that accepts new deployments."""
    with rt.session() as session:
        session.add(Deployment(platform_id=platform_id, deployment_id=deployment_id))
        try:
            session.commit()
        except IntegrityError:  # already known, or recorded by a concurrent launch
            session.rollback()
    _changed()


def remove(rt: Runtime, platform_id: int, *, actor: str = "", address: str = "") -> None:
    """Remove a platform with its deployments and the grade and roster endpoints launches remembered for it.
    Its courses, activities, labs and LabDesk's record of scores stay; launches from it are refused."""
    with rt.session() as session:
        row = _row(session, platform_id)
        if actor:
            audit.record(session, actor, "platform.remove", target=f"platform:{platform_id}", address=address,
                         detail=f"{row.name}: issuer {row.issuer}, client id {row.client_id}")
        session.delete(row)
        session.commit()
    _changed()


def _row(session: Session, platform_id: int) -> Platform:
    row = session.get(Platform, platform_id)
    if row is None:
        raise RegistrationError(f"no platform {platform_id}")
    return row


def _by_pair(session: Session, issuer: str, client_id: str) -> Platform | None:
    return session.scalar(select(Platform).where(Platform.issuer == issuer, Platform.client_id == client_id))


# -- reading --------------------------------------------------------------------------------------------
def find(rt: Runtime, issuer: str, client_id: str | None) -> PlatformInfo | None:
    """The registration for a launch or login: by issuer and client id, or by issuer alone when the
    platform sent no client id and has exactly one registration."""
    with rt.session() as session:
        query = select(Platform).where(Platform.issuer == issuer)
        if client_id:
            query = query.where(Platform.client_id == client_id)
        rows = session.scalars(query.limit(2)).all()
        return PlatformInfo.of(rows[0]) if len(rows) == 1 else None


_PLATFORMS, _DEPLOYMENTS = Platform.__table__, Deployment.__table__
# Every launch reads its platform: one Core query with the deployments joined, built once (the ORM's get
# and the lazy load of `deployments` were two round trips and about five times the CPU).
_BY_ID = (
    select(*(_PLATFORMS.c[name] for name in _INFO_COLUMNS), _DEPLOYMENTS.c.deployment_id)
    .select_from(_PLATFORMS.outerjoin(_DEPLOYMENTS, _DEPLOYMENTS.c.platform_id == _PLATFORMS.c.id))
    .where(_PLATFORMS.c.id == bindparam("platform_id"))
    .order_by(_DEPLOYMENTS.c.id)
)


_RECENT: dict[tuple[str, int], tuple[float, PlatformInfo]] = {}
RECENT_SECONDS = 10.0


def recent(rt: Runtime, platform_id: int) -> PlatformInfo:
    """`by_id`, remembered for a few seconds per process: every launch needs its platform, which changes
    rarely. Changes made through this module clear the memory at once; other processes see them within
    `RECENT_SECONDS`."""
    key = (rt.settings.sqlalchemy_url, platform_id)
    found = _RECENT.get(key)
    if found is not None and time.monotonic() - found[0] < RECENT_SECONDS:
        return found[1]
    info = by_id(rt, platform_id)
    _RECENT[key] = (time.monotonic(), info)
    return info


def _changed() -> None:
    _RECENT.clear()


def by_id(rt: Runtime, platform_id: int) -> PlatformInfo:
    with rt.session() as session:
        rows = session.execute(_BY_ID, {"platform_id": platform_id}).all()
    if not rows:
        raise RegistrationError(f"no platform {platform_id}")
    first = rows[0]._mapping
    return PlatformInfo(
        **{name: first[name] for name in _INFO_COLUMNS},
        deployments=tuple(row.deployment_id for row in rows if row.deployment_id is not None),
    )


def listing(rt: Runtime) -> list[PlatformInfo]:
    with rt.session() as session:
        return [PlatformInfo.of(row) for row in session.scalars(select(Platform).order_by(Platform.id))]


@dataclass(frozen=True)
class PlatformUsage:
    """What came through a registration, from the endpoints every launch remembers per activity."""

    courses: int = 0  # courses with an activity launched through it
    activities: int = 0  # activities launched through it
    pending_scores: int = 0  # scores of those activities not yet delivered to its gradebook


def usage(rt: Runtime) -> dict[int, PlatformUsage]:
    """Per platform id, in two grouped queries (platforms without launches are absent)."""
    by_platform = select(LinkServices.platform_id).group_by(LinkServices.platform_id)
    with rt.session() as session:
        counts = session.execute(
            by_platform.add_columns(func.count(func.distinct(Activity.course_id)), func.count())
            .join(Activity, Activity.id == LinkServices.activity_id)
        ).all()
        pending = dict(session.execute(
            by_platform.add_columns(func.count())
            .join(ScoreOutbox, ScoreOutbox.activity_id == LinkServices.activity_id).where(ScoreOutbox.state == "pending")
        ).all())
    return {pid: PlatformUsage(courses, activities, pending.get(pid, 0)) for pid, courses, activities in counts}
