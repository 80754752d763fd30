"""Demonstration data for the embedded default: one local desktop lab in one course."""

from __future__ import annotations

from sqlalchemy import select

from broker.models import Activity, Backend, Course, Image
from broker.runtime import Runtime


def seed(rt: Runtime) -> str:
    """Create what a first-time visitor needs to open a lab; safe to run again."""
    with rt.session() as session:
        backend = _get_or_add(session, Backend, dict(name=rt.settings.default_backend), kind="local", config={})
        image = _get_or_add(
            session, Image, dict(slug="local-desktop", version=1),
            title="Linux desktop (this host)", description="A light desktop started on the LabDesk host.",
            protocol="vnc", spec={},
        )
        course = _get_or_add(session, Course, dict(issuer="dev", context_id="demo"), title="Demo course")
        session.flush()
        _get_or_add(
            session, Activity, dict(course_id=course.id, resource_link_id="demo-desktop"),
            title="Demo desktop lab", image_id=image.id, backend_id=backend.id,
            idle_suspend_after=rt.settings.idle_suspend_after, keepalive_interval=rt.settings.keepalive_interval,
            reap_after_days=rt.settings.reap_after_days,
        )
        session.commit()
    return "demo course, image, backend and activity are in place"


def _get_or_add(session, model, keys, **values):  # type: ignore[no-untyped-def]
    found = session.scalar(select(model).filter_by(**keys))
    if found is None:
        found = model(**keys, **values)
        session.add(found)
        session.flush()
    return found
