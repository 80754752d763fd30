"""The console's Images section: every catalogue image with all its versions, which activities use which
version, and importing the site's catalogue (the directory `labdesk images import` reads when given none).

Importing is broker.images.import_entries: all or nothing, and idempotent (an unchanged entry keeps its
version, a changed one becomes a new version beside the old, which the activities on it keep using).
"""

from __future__ import annotations

from typing import Any

from flask import render_template
from sqlalchemy import select

from broker import audit, images
from broker.catalogue import CatalogueError, shown
from broker.errors import LabDeskError
from broker.models import Activity, Course, Image
from web.admin.auth import actor, admin, admin_required, client_address, current_admin
from web.context import rt


def _catalogue() -> list[dict[str, Any]]:
    """Images by id, each with its versions (newest first) and the activities on each version."""
    with rt().session() as db:
        used: dict[int, list[dict[str, Any]]] = {}
        rows = db.execute(select(Activity.image_id, Activity.id, Activity.title, Course.title)
                          .join(Course, Course.id == Activity.course_id).order_by(Activity.id))
        for image_id, activity_id, title, course in rows:
            used.setdefault(image_id, []).append({"id": activity_id, "title": title, "course": course})
        by_slug: dict[str, dict[str, Any]] = {}
        for image in db.scalars(select(Image).order_by(Image.slug, Image.version.desc())):
            entry = by_slug.setdefault(image.slug, {"id": image.slug, "title": image.title, "versions": []})
            spec = image.spec if isinstance(image.spec, dict) else {}
            entry["versions"].append({
                "version": image.version, "protocol": image.protocol, "backends": sorted(spec.get("backends", {})),
                "digest": (image.digest or "")[:12], "created_at": image.created_at, "activities": used.get(image.id, []),
            })
    return list(by_slug.values())


def _page(imported: list[images.Imported] | None = None, problems: list[str] | None = None,
          status: int = 200) -> tuple[str, int]:
    return render_template(
        "admin/images.html", admin=current_admin(), images=_catalogue(), imported=imported,
        problems=problems or [], source=shown(images.SHIPPED),
    ), status


@admin.get("/images", endpoint="images")
@admin_required
def images_page():  # type: ignore[no-untyped-def]
    return _page()


@admin.post("/images/import")
@admin_required
def images_import():  # type: ignore[no-untyped-def]
    """Import the site's catalogue; show what each entry became, or every problem (file: key: reason)."""
    source = shown(images.SHIPPED)
    try:
        results = images.import_entries(rt())
    except CatalogueError as exc:
        _audit("images.import_refused", f"{source}: {len(exc.problems)} problem(s): {exc.problems[0]}")
        return _page(problems=exc.problems, status=400)
    except LabDeskError as exc:
        _audit("images.import_refused", f"{source}: {exc}")
        return _page(problems=[str(exc)], status=400)
    counts = {status: sum(r.status == status for r in results) for status in ("added", "updated", "unchanged")}
    _audit("images.import", f"{source}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return _page(imported=results)


def _audit(action: str, detail: str) -> None:
    with rt().session() as db:
        audit.record(db, actor(), action, target="catalogue", detail=detail, address=client_address())
        db.commit()
