"""/admin/labs: labs filtered by state, backend, course and age (broker.lab_search.find_labs), a page at
a time, and bulk suspend / resume / delete on the ones ticked (broker.lab_search.bulk_action).

The bulk form posts, then redirects back to the same filtered list with the outcome ("N done, M skipped
(reason)") carried in the session, so a reload never repeats an action. Deleting asks for a second,
explicit confirmation on a page of its own, since it cannot be undone. The service writes the audit rows
(one per lab asked about) with `actor()` and the client's address.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import flash, get_flashed_messages, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from broker import lab_search
from broker.lifecycle import LabState
from broker.models import Backend, Course
from web.admin.auth import actor, admin, admin_required, client_address, current_admin
from web.context import rt

PAGE_SIZE = 50
STATES = [s.value for s in LabState]
# Age filter choices: (value, label, older_than, newer_than); age is since the lab was created.
AGES: list[tuple[str, str, timedelta | None, timedelta | None]] = [
    ("", "any age", None, None),
    ("lt1h", "created in the last hour", None, timedelta(hours=1)),
    ("lt1d", "created in the last day", None, timedelta(days=1)),
    ("gt1d", "older than a day", timedelta(days=1), None),
    ("gt7d", "older than a week", timedelta(days=7), None),
    ("gt30d", "older than 30 days", timedelta(days=30), None),
]
FILTER_KEYS = ("state", "backend", "course", "age")
RESULT_CATEGORY = "bulk-result"


class BadFilter(ValueError):
    """A filter value the list cannot use; shown to the admin as it is."""


@dataclass(frozen=True)
class Filters:
    state: str
    backend: str
    course: int | None
    age: str
    page: int

    def query(self, **changes: Any) -> dict[str, Any]:
        """The filters as URL parameters (empty ones left out), for links and redirects."""
        values = {"state": self.state, "backend": self.backend, "course": self.course, "age": self.age,
                  "page": self.page if self.page > 1 else None, **changes}
        return {k: v for k, v in values.items() if v not in ("", None)}


def parse_filters(args: MultiDict[str, str]) -> Filters:
    """Read the filters from a query string or a form; an unknown state, course or age is refused."""
    state = args.get("state", "").strip()
    if state and state not in STATES:
        raise BadFilter(f"“{state}” is not a lab state: choose one of {', '.join(STATES)}.")
    course_raw = args.get("course", "").strip()
    if course_raw and not course_raw.isdigit():
        raise BadFilter(f"“{course_raw}” is not a course.")
    age = args.get("age", "").strip()
    if age not in {a[0] for a in AGES}:
        raise BadFilter(f"“{age}” is not an age filter.")
    page_raw = args.get("page", "1").strip() or "1"
    if not page_raw.isdigit() or int(page_raw) < 1:
        raise BadFilter(f"“{page_raw}” is not a page number.")
    return Filters(state, args.get("backend", "").strip(), int(course_raw) if course_raw else None, age, int(page_raw))


def _choices() -> dict[str, Any]:
    """What the filter form offers: every backend and course by name."""
    with rt().session() as db:
        backends = list(db.scalars(select(Backend.name).order_by(Backend.name)))
        courses = db.execute(select(Course.id, Course.title).order_by(Course.title, Course.id)).all()
    return {"backends": backends, "courses": courses, "states": STATES, "ages": AGES}


def _find(filters: Filters) -> lab_search.LabPage:
    _, _, older, newer = next(a for a in AGES if a[0] == filters.age)
    with rt().session() as db:
        return lab_search.find_labs(
            db, states=[filters.state] if filters.state else None, backend=filters.backend or None,
            course=filters.course, older_than=older, newer_than=newer,
            limit=PAGE_SIZE, offset=(filters.page - 1) * PAGE_SIZE,
        )


@admin.get("/labs")
@admin_required
def labs():  # type: ignore[no-untyped-def]
    try:
        filters = parse_filters(request.args)
    except BadFilter as exc:
        return render_template("admin/labs.html", error=str(exc), filters=None, admin=current_admin(), **_choices()), 400
    found = _find(filters)
    return render_template(
        "admin/labs.html", error="", filters=filters, found=found, pages=max(1, -(-found.total // PAGE_SIZE)),
        results=get_flashed_messages(category_filter=[RESULT_CATEGORY]), admin=current_admin(), **_choices(),
    )


@admin.post("/labs/bulk")
@admin_required
def labs_bulk():  # type: ignore[no-untyped-def]
    try:
        filters = parse_filters(request.form)
    except BadFilter:
        filters = Filters("", "", None, "", 1)
    action = request.form.get("action", "")
    lab_ids = request.form.getlist("lab", type=int)
    if action not in lab_search.TARGETS:
        flash(f"“{action}” is not a bulk action.", RESULT_CATEGORY)
    elif not lab_ids:
        flash("Tick at least one lab first.", RESULT_CATEGORY)
    elif action == "delete" and request.form.get("confirm") != "yes":
        return render_template("admin/labs_confirm.html", lab_ids=lab_ids, filters=filters, admin=current_admin())
    else:
        result = lab_search.bulk_action(rt(), lab_ids, action, actor(), client_address())  # type: ignore[arg-type]
        flash(f"{action.capitalize()}: {summary(result)}", RESULT_CATEGORY)
    return redirect(url_for("admin.labs", **filters.query()))


def summary(result: lab_search.BulkResult) -> str:
    """“N done, M skipped (reason: labs …)”, one reason per group of labs it applies to."""
    text = f"{len(result.done)} done, {len(result.skipped)} skipped"
    if not result.skipped:
        return text + "."
    by_reason: dict[str, list[int]] = defaultdict(list)
    for lab_id, reason in result.skipped.items():
        by_reason[reason].append(lab_id)
    reasons = "; ".join(f"{reason}: lab{'s' * (len(ids) > 1)} {', '.join(map(str, ids))}" for reason, ids in by_reason.items())
    return f"{text} ({reasons})."
