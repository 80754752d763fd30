"""The instructor view of one activity, reached by a launch with a staff role: who opened a lab, in which
state it is, every learner's checks and current score (with a page per attempt), and the class roster
from the LMS's Names and Role Provisioning Service."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from broker import attempt_views, class_view, grading_settings, limit_settings, services
from broker.models import Activity, CheckAttempt
from broker.services import NotFound
from lti import nrps
from lti.roles import view_for
from lti.service_token import ServiceError
from web.context import rt

instructor = Blueprint("instructor", __name__, template_folder="templates")


@instructor.get("/teach/activities/<id:activity_id>")
def activity(activity_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        found = db.get(Activity, activity_id)
        if found is None or found.course_id not in session.get("instructor_courses", []):
            abort(404)
        roster, roster_error = _roster(activity_id) if request.args.get("roster") else (None, "")
        return _page(db, found, roster=roster, roster_error=roster_error, grading_saved=bool(request.args.get("grading")),
                     limits_saved=request.args.get("limits") == "saved")


def _page(db, found: Activity, *, roster=None, roster_error: str = "", grading_saved: bool = False,  # type: ignore[no-untyped-def]
          grading_form: dict[str, str] | None = None, grading_error: str = "",
          limits_saved: bool = False, limits_form: dict[str, str] | None = None, limits_error: str = ""):
    """The instructor view; `grading_form` (what was typed) and `grading_error` when a save was refused;
    the same for the limits form."""
    return render_template(
        "lti/instructor.html", activity=found, rows=class_view.lab_rows(db, found), roster=roster, roster_error=roster_error,
        newer=services.newer_image(db, found), updated=request.args.get("updated"),
        grades=class_view.grade_rows(rt(), db, found), check_count=len((found.image.spec or {}).get("checks") or []),
        grading_form=grading_form or _grading_form(found), grading_error=grading_error, grading_saved=grading_saved,
        limits_form=limits_form or _limits_form(found), limits_error=limits_error, limits_saved=limits_saved,
        limits_warning=limit_settings.unreachable_warning(db, found),
    )


@instructor.get("/teach/attempts/<id:attempt_id>")
def attempt(attempt_id: int):  # type: ignore[no-untyped-def]
    """One check attempt as the instructor sees it: every check's result, feedback and hint, the score."""
    with rt().session() as db:
        found = db.get(CheckAttempt, attempt_id)
        if found is None or not _teaches(db, found.activity):
            abort(404)
        activity, learner = found.activity, found.user.name or found.user.subject
        view = attempt_views.attempt_view(rt(), attempt_id, as_instructor=True)
        return render_template("lti/attempt.html", activity=activity, learner=learner, attempt=view)


@instructor.post("/teach/activities/<id:activity_id>/image")
def update_image(activity_id: int):  # type: ignore[no-untyped-def]
    """Move this activity to the newest version of its lab image."""
    with rt().session() as db:
        found = db.get(Activity, activity_id)
        if found is None or found.course_id not in session.get("instructor_courses", []):
            abort(404)
    version = services.update_activity_image(rt(), activity_id)
    return redirect(url_for("instructor.activity", activity_id=activity_id, updated=version or "current"))


GRADING_FIELDS = ("grading_policy", "auto_check", "due_at", "hide_results_until")
_DATE_LABELS = {"due_at": "The due date", "hide_results_until": "“Hide results until”"}


@instructor.post("/teach/activities/<id:activity_id>/grading")
def update_grading(activity_id: int):  # type: ignore[no-untyped-def]
    """Change the activity's grading settings (`broker.grading_settings.set_grading`). Dates come from
    datetime-local inputs and are UTC (the form says so); an empty date clears it. A field the form does
    not send stays as it is. A refused value shows the page again with the message and what was typed."""
    with rt().session() as db:
        found = db.get(Activity, activity_id)
        if found is None or found.course_id not in session.get("instructor_courses", []):
            abort(404)
    typed = {name: request.form[name].strip() for name in GRADING_FIELDS if name in request.form}
    try:
        changes: dict[str, object] = {name: typed[name] for name in ("grading_policy", "auto_check") if name in typed}
        changes.update({name: _utc_input(name, typed[name]) for name in _DATE_LABELS if name in typed})
        grading_settings.set_grading(rt(), activity_id, **changes)  # type: ignore[arg-type]
    except NotFound:
        abort(404)
    except grading_settings.InvalidGrading as exc:
        with rt().session() as db:
            found = db.get(Activity, activity_id)
            if found is None:
                abort(404)
            form = {**_grading_form(found), **typed}
            return _page(db, found, grading_form=form, grading_error=str(exc)), 400
    return redirect(url_for("instructor.activity", activity_id=activity_id, grading="saved") + "#grading-settings")


def _utc_input(name: str, value: str) -> datetime | None:
    """A datetime-local value ("2027-01-15T12:00"), read as UTC; empty is None (no date)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise grading_settings.InvalidGrading(
            f"{_DATE_LABELS[name]} must be a date and time such as 2027-01-15T12:00 (UTC); got {value!r}"
        ) from None


def _grading_form(activity: Activity) -> dict[str, str]:
    """The activity's grading settings as the form's fields hold them (datetime-local, UTC)."""
    def local(moment: datetime | None) -> str:
        if moment is None:
            return ""
        return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second else "%Y-%m-%dT%H:%M")

    return {"grading_policy": activity.grading_policy, "auto_check": activity.auto_check,
            "due_at": local(activity.due_at), "hide_results_until": local(activity.hide_results_until)}


LIMIT_FIELDS = ("weekly_hours_limit", "min_trust_level")


@instructor.post("/teach/activities/<id:activity_id>/limits")
def update_limits(activity_id: int):  # type: ignore[no-untyped-def]
    """Change the activity's limits (`broker.limit_settings`): hours per learner per week (empty: no
    limit) and the minimum trust level. A refused value shows the page again with the message and what
    was typed; nothing is changed then. Audited as `instructor:<user id>`."""
    with rt().session() as db:
        found = db.get(Activity, activity_id)
        if found is None or not _teaches(db, found):
            abort(404)
    typed = {name: request.form.get(name, "") for name in LIMIT_FIELDS}
    try:
        limit_settings.set_limits(rt(), activity_id, typed["weekly_hours_limit"], typed["min_trust_level"],
                                  actor=f"instructor:{session['user_id']}", address=request.remote_addr or "")
    except NotFound:
        abort(404)
    except limit_settings.InvalidLimits as exc:
        with rt().session() as db:
            found = db.get(Activity, activity_id)
            if found is None:
                abort(404)
            return _page(db, found, limits_form=typed, limits_error=str(exc)), 400
    return redirect(url_for("instructor.activity", activity_id=activity_id, limits="saved") + "#limits-settings", 303)


def _limits_form(activity: Activity) -> dict[str, str]:
    hours = activity.weekly_hours_limit
    return {"weekly_hours_limit": "" if hours is None else f"{hours:g}", "min_trust_level": str(activity.min_trust_level)}


def _teaches(db, activity: Activity) -> bool:  # type: ignore[no-untyped-def]
    return activity.course_id in session.get("instructor_courses", []) and services.is_instructor(db, activity.course_id, session.get("user_id", 0))


def _roster(activity_id: int) -> tuple[list[dict[str, str]], str]:
    """The class list from the LMS (NRPS, every page), fetched only when the instructor asks: it is a call
    to the LMS, bounded by `lti_http_timeout` per page."""
    try:
        members = nrps.roster(rt(), activity_id)
    except ServiceError as exc:
        return [], f"The LMS did not give the class roster: {exc}"
    return [dict(name=m.name or m.email or m.user_id, view=view_for(m.roles), status=m.status) for m in members], ""
