"""Demonstration data for the embedded default: the shipped catalogue, and one local desktop lab in one course."""

from __future__ import annotations

from sqlalchemy import select

from broker import images
from broker.models import Activity, Backend, Course, Image
from broker.runtime import Runtime

DEMO_IMAGE = "local-desktop"


def seed(rt: Runtime) -> str:
    """Import the shipped catalogue and create what a first-time visitor needs to open a lab; safe to run
    again (the import is idempotent, and an existing demo activity keeps its image version)."""
    imported = images.import_entries(rt)
    with rt.session() as session:
        backend = _get_or_add(session, Backend, dict(name=rt.settings.default_backend), kind="local", config={})
        image = session.scalar(select(Image).where(Image.slug == DEMO_IMAGE).order_by(Image.version.desc()).limit(1))
        if image is None:
            return f"the catalogue has no {DEMO_IMAGE} entry; nothing else was added"
        course = _get_or_add(session, Course, dict(issuer="dev", context_id="demo"), title="Demo course")
        session.flush()
        _get_or_add(
            session, Activity, dict(course_id=course.id, resource_link_id="demo-desktop"),
            title="Demo desktop lab", image_id=image.id, backend_id=backend.id,
            idle_suspend_after=_default(image, "idle_suspend_after", rt.settings.idle_suspend_after),
            keepalive_interval=rt.settings.keepalive_interval,
            reap_after_days=_default(image, "reap_after_days", rt.settings.reap_after_days),
        )
        session.commit()
    changed = sum(result.status != "unchanged" for result in imported)
    return f"catalogue imported ({changed} new or updated of {len(imported)}); demo course, backend and activity are in place"


def _default(image: Image, key: str, fallback: int) -> int:
    value = (image.spec or {}).get("defaults", {}).get(key)
    return value if isinstance(value, int) else fallback


def _get_or_add(session, model, keys, **values):  # type: ignore[no-untyped-def]
    found = session.scalar(select(model).filter_by(**keys))
    if found is None:
        found = model(**keys, **values)
        session.add(found)
        session.flush()
    return found
