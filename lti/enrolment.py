"""What a launch writes: the user, the course, their membership and the activity behind the resource link.

Every launch upserts with `INSERT … ON CONFLICT DO UPDATE … RETURNING` (PostgreSQL and SQLite both speak
it), one statement per row, so concurrent first launches never collide and a launch costs a handful of
round trips however often it repeats. The upserts are Core statements built once per process and run with
the row's values as parameters: built per call through the ORM, each cost about five times the CPU
(bench/launch.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.models import Activity, Backend, Course, Image, Membership, User
from lti.catalogue_view import entry_default
from lti.claims import Launch
from lti.models import LinkServices


class LinkNotConfigured(Exception):
    """The resource link names no lab LabDesk knows (it was not added through deep linking)."""


_UPSERTS: dict[tuple[str, type, tuple[str, ...], tuple[str, ...]], Any] = {}


def _upsert(session: Session, model: type, values: dict[str, Any], keys: list[str], update: list[str]) -> int:
    dialect = session.bind.dialect.name  # type: ignore[union-attr]
    cache_key = (dialect, model, tuple(keys), tuple(update))
    statement = _UPSERTS.get(cache_key)
    if statement is None:
        table = model.__table__  # type: ignore[attr-defined]
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
        changes = {name: insert.excluded[name] for name in update}
        statement = _UPSERTS[cache_key] = insert.on_conflict_do_update(index_elements=keys, set_=changes).returning(table.c.id)
    return session.execute(statement, values).scalar_one()


def record(session: Session, launch: Launch) -> tuple[int, int]:
    """Upsert the launching user and their course membership; returns (user id, course id)."""
    now = utcnow()
    user_id = _upsert(
        session, User, dict(issuer=launch.issuer, subject=launch.subject, name=launch.name, email=launch.email, created_at=now),
        ["issuer", "subject"], ["name", "email"],
    )
    course_id = _upsert(
        session, Course, dict(issuer=launch.issuer, context_id=launch.context_id or "-", title=launch.context_title, created_at=now),
        ["issuer", "context_id"], ["title"],
    )
    _upsert(
        session, Membership,
        dict(course_id=course_id, user_id=user_id, role=launch.view, test_user=launch.test_user, last_launch_at=now),
        ["course_id", "user_id"], ["role", "test_user", "last_launch_at"],
    )
    return user_id, course_id


def activity_for(session: Session, launch: Launch, course_id: int, default_backend: str, defaults: dict[str, int]) -> int:
    """The activity behind the launch's resource link, created on its first launch from the `lab` custom
    parameter that deep linking put on the link."""
    found = session.execute(_ACTIVITY, {"course_id": course_id, "resource_link_id": launch.resource_link_id}).first()
    if found is None:
        activity_id = _create_activity(session, launch, course_id, default_backend, defaults)
        found = session.execute(_SERVICES_OF, {"activity_id": activity_id}).first()  # a concurrent first launch may have written them
    else:
        activity_id = found.id
    _remember_services(session, launch, activity_id, found if found is not None and found.services is not None else None)
    return activity_id


def _create_activity(session: Session, launch: Launch, course_id: int, default_backend: str, defaults: dict[str, int]) -> int:
    image = _image(session, str(launch.custom.get("lab", "")), str(launch.custom.get("lab_version", "")))
    backend_id = session.scalar(select(Backend.id).where(Backend.name == default_backend))
    if image is None or backend_id is None:
        raise LinkNotConfigured(launch.custom.get("lab", ""))
    settings = {key: _whole(entry_default(image.spec, key), value) for key, value in defaults.items()}
    return _upsert(
        session, Activity,
        dict(course_id=course_id, resource_link_id=launch.resource_link_id, title=launch.resource_link_title or image.title,
             image_id=image.id, backend_id=backend_id, created_at=utcnow(), **settings),
        ["course_id", "resource_link_id"], ["title"],
    )


def _whole(value: Any, default: int) -> int:
    """A catalogue number, or the default when the entry holds something else (never a failed launch)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _image(session: Session, slug: str, version: str) -> Image | None:
    query = select(Image).where(Image.slug == slug)
    if version.isascii() and version.isdigit() and len(version) <= 9:  # "²" is a digit; 10 digits overflow INTEGER
        query = query.where(Image.version == int(version))
    return session.scalar(query.order_by(Image.version.desc()).limit(1)) if slug else None


def _remember_services(session: Session, launch: Launch, activity_id: int, current: Row[Any] | None) -> None:
    """Keep the LMS's grade and roster endpoints for this activity; written only when they change.
    `current` is the row of `_ACTIVITY` or `_SERVICES_OF`, None when the activity has none yet."""
    wanted = dict(
        platform_id=launch.platform_id, lineitem_url=launch.lineitem_url, lineitems_url=launch.lineitems_url,
        ags_scopes=list(launch.ags_scopes), memberships_url=launch.memberships_url,
    )
    if current is not None and not wanted["lineitem_url"]:
        wanted["lineitem_url"] = current.lineitem_url  # a launch without the claim keeps the line item found or made
    if current is None:
        session.execute(insert(_SERVICES), dict(activity_id=activity_id, updated_at=utcnow(), **wanted))
    elif any(getattr(current, key) != value for key, value in wanted.items()):
        session.execute(update(_SERVICES).where(_SERVICES.c.activity_id == activity_id).values(**wanted, updated_at=utcnow()))


# The reads of every launch as Core statements built once (through the ORM each cost several times the CPU):
# the activity behind a (course, resource link) with its services joined (`services` is None when it has
# none), and the services of one activity.
_ACTIVITIES, _SERVICES = Activity.__table__, LinkServices.__table__
_SERVICE_COLUMNS = [_SERVICES.c[name] for name in ("platform_id", "lineitem_url", "lineitems_url", "ags_scopes", "memberships_url")]
_ACTIVITY = (
    select(_ACTIVITIES.c.id, _SERVICES.c.activity_id.label("services"), *_SERVICE_COLUMNS)
    .select_from(_ACTIVITIES.outerjoin(_SERVICES, _SERVICES.c.activity_id == _ACTIVITIES.c.id))
    .where(_ACTIVITIES.c.course_id == bindparam("course_id"), _ACTIVITIES.c.resource_link_id == bindparam("resource_link_id"))
)
_SERVICES_OF = select(_SERVICES.c.activity_id.label("services"), *_SERVICE_COLUMNS).where(
    _SERVICES.c.activity_id == bindparam("activity_id")
)
