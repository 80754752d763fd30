"""Platform registrations: which LMSs may launch LabDesk, with which client ids and deployments.

Managed by `labdesk platforms add|list|remove`, by Dynamic Registration and (in development) by the
emulator. Launches look registrations up on every request, so the lookup is one indexed query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from broker.errors import LabDeskError
from broker.runtime import Runtime
from lti.models import Deployment, Platform


class RegistrationError(LabDeskError):
    """A platform registration is missing, duplicated or malformed."""


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


_URL_FIELDS = ("auth_login_url", "auth_token_url", "key_set_url")
_INFO_COLUMNS = tuple(f.name for f in fields(PlatformInfo) if f.name != "deployments")


def add(
    rt: Runtime, issuer: str, client_id: str, auth_login_url: str, auth_token_url: str, key_set_url: str,
    deployments: list[str] | tuple[str, ...] = (), name: str = "", auth_audience: str = "",
    accept_new_deployments: bool = False, replace: bool = False,
) -> PlatformInfo:
    """Register a platform (or, with `replace`, update the one with that issuer and client id)."""
    urls = dict(auth_login_url=auth_login_url, auth_token_url=auth_token_url, key_set_url=key_set_url)
    _check(issuer, client_id, urls)
    with rt.session() as session:
        row = session.scalar(select(Platform).where(Platform.issuer == issuer, Platform.client_id == client_id))
        if row is not None and not replace:
            raise RegistrationError(f"platform {issuer} with client id {client_id} is already registered")
        if row is None:
            row = Platform(issuer=issuer, client_id=client_id)
            session.add(row)
        for key, value in urls.items():
            setattr(row, key, value)
        row.name, row.auth_audience, row.accept_new_deployments = name or issuer, auth_audience, accept_new_deployments
        known = {d.deployment_id for d in row.deployments}
        row.deployments.extend(Deployment(deployment_id=d) for d in dict.fromkeys(deployments) if d not in known)
        try:
            session.commit()
        except IntegrityError:
            raise RegistrationError(f"platform {issuer} with client id {client_id} is already registered") from None
        _changed()
        return PlatformInfo.of(row)


def _check(issuer: str, client_id: str, urls: dict[str, str]) -> None:
    if not issuer.startswith(("https://", "http://")):
        raise RegistrationError(f"issuer must be an http(s) URL, got {issuer!r}")
    if not client_id.strip():
        raise RegistrationError("client id must not be empty")
    for key, value in urls.items():
        if not value.startswith(("https://", "http://")):
            raise RegistrationError(f"{key.replace('_', ' ')} must be an http(s) URL, got {value!r}")


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


def add_deployment(rt: Runtime, platform_id: int, deployment_id: str) -> None:
    """Record a deployment id (first launch from a platform that accepts new deployments, or an admin)."""
    with rt.session() as session:
        session.add(Deployment(platform_id=platform_id, deployment_id=deployment_id))
        try:
            session.commit()
        except IntegrityError:  # already known, or recorded by a concurrent launch
            session.rollback()
    _changed()


def listing(rt: Runtime) -> list[PlatformInfo]:
    with rt.session() as session:
        return [PlatformInfo.of(row) for row in session.scalars(select(Platform).order_by(Platform.id))]


def remove(rt: Runtime, platform_id: int) -> None:
    with rt.session() as session:
        row = session.get(Platform, platform_id)
        if row is None:
            raise RegistrationError(f"no platform {platform_id}")
        session.delete(row)
        session.commit()
    _changed()
