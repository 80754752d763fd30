"""The course dashboard: every activity of a course an instructor teaches, each learner's lab, last
activity, score and attempts, and what the instructor may do to those labs (watch, suspend, reset, and
"Suspend all" after class), and the class sessions that start labs before a class begins (broker.class_schedule).

Only an instructor of the course reaches any of it: the course must be in the session's
`instructor_courses` (set by an instructor launch) and the database must still list them as its
instructor. Everyone else gets 404, as for an unknown id, so the pages do not even confirm that a course
exists. Every action is a POST with the CSRF token (web/csrf.py) and is written to the audit log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit, class_labs, class_schedule, class_view, launch_gate, services
from broker.clock import utcnow
from broker.models import ENDED_STATES, Activity, ClassSession, Course, Lab
from web.context import rt

dashboard = Blueprint("dashboard", __name__, template_folder="templates")

SORTS = ("name", "last_activity")
STATE_FILTERS = ("running", "suspended", "suspending", "resuming", "requested", "provisioning", "failed", "deleted", "none")


@dashboard.get("/teach/courses/<id:course_id>")
def course(course_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        return _page(db, _taught_course(db, course_id))


def _page(db: Session, found: Course, refused: tuple[int, dict[str, str], str] | None = None):  # type: ignore[no-untyped-def]
    """The dashboard; `refused` is (activity id, what was typed, why) when a class session was refused."""
    state, sort = request.args.get("state", ""), request.args.get("sort", "name")
    activities = db.scalars(select(Activity).where(Activity.course_id == found.id).order_by(Activity.title, Activity.id)).all()
    sections = [
        dict(activity=a, rows=_shown(class_view.learner_rows(rt(), db, a), state, sort), classes=class_schedule.upcoming(db, a.id),
             class_form=refused[1] if refused and refused[0] == a.id else _class_form(),
             class_error=refused[2] if refused and refused[0] == a.id else "", prewarmed=_prewarmed(db, a.id))
        for a in activities
    ]
    return render_template(
        "lti/dashboard.html", course=found, sections=sections, state=state, sort=sort, states=STATE_FILTERS,
        notice=_notice(db, found.id, request.args), learners_known=class_schedule.known_learners(db, found.id),
        now=utcnow(), warms_at=class_schedule.warms_at, max_pool=class_schedule.MAX_WARM_POOL,
    )


# -- class sessions (broker.class_schedule) ---------------------------------------------------------------

CLASS_FIELDS = ("starts_at", "duration_minutes", "lead_minutes", "warm_pool")
_NUMBER_LABELS = {"duration_minutes": "The length", "lead_minutes": "Start the labs … minutes before", "warm_pool": "The warm pool"}


@dashboard.post("/teach/activities/<id:activity_id>/class-sessions")
def add_class_session(activity_id: int):  # type: ignore[no-untyped-def]
    """Schedule a class session of the activity. The start is typed in UTC (datetime-local, labelled so);
    a refusal shows the dashboard again with the reason and what was typed, and stores nothing."""
    with rt().session() as db:
        activity = db.get(Activity, activity_id)
        if activity is None:
            abort(404)
        course_id = _taught_course(db, activity.course_id).id
    typed = {name: request.form.get(name, "").strip() for name in CLASS_FIELDS}
    try:
        added = class_schedule.add(
            rt(), activity_id, _utc(typed["starts_at"]), *(_whole(name, typed[name]) for name in CLASS_FIELDS[1:]),
            actor=_actor(), address=request.remote_addr or "",
        )
    except class_schedule.ScheduleError as exc:
        with rt().session() as db:
            return _page(db, _taught_course(db, course_id), refused=(activity_id, typed, str(exc))), 400
    return _back(course_id, anchor=f"classes-{activity_id}", done="scheduled", session=str(added.id))


@dashboard.post("/teach/class-sessions/<id:session_id>/cancel")
def cancel_class_session(session_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        found = db.get(ClassSession, session_id)
        if found is None:
            abort(404)
        course_id, activity_id = _taught_course(db, found.activity.course_id).id, found.activity_id
    try:
        deleted = class_schedule.cancel(rt(), session_id, _actor(), request.remote_addr or "")
    except class_schedule.ScheduleError as exc:
        with rt().session() as db:
            return _page(db, _taught_course(db, course_id), refused=(activity_id, _class_form(), str(exc))), 409
    return _back(course_id, anchor=f"classes-{activity_id}", done="cancelled", labs=str(deleted))


def _prewarmed(db: Session, activity_id: int) -> set[int]:
    """The activity's live labs a class session started that their learner has not opened yet."""
    return set(db.scalars(select(Lab.id).where(Lab.activity_id == activity_id, Lab.prewarmed_by.is_not(None), Lab.state.not_in(ENDED_STATES))))


def _class_form() -> dict[str, str]:
    """The empty form's suggestions: 90 minutes, labs started 10 minutes before, no warm pool."""
    return {"starts_at": "", "duration_minutes": "90", "lead_minutes": "10", "warm_pool": "0"}


def _utc(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        shown = f"; got {value!r}" if value else ""
        raise class_schedule.ScheduleError(f"The start must be a date and time such as 2027-01-15T09:00 (UTC){shown}.") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _whole(name: str, value: str) -> int:
    if not value.lstrip("-").isdigit():
        raise class_schedule.ScheduleError(f"{_NUMBER_LABELS[name]} must be a whole number of {'labs' if name == 'warm_pool' else 'minutes'}; got {value!r}.")
    return int(value)


@dashboard.post("/teach/labs/<id:lab_id>/suspend")
def suspend(lab_id: int):  # type: ignore[no-untyped-def]
    course_id, name = _taught_lab(lab_id)
    class_labs.suspend(rt(), lab_id, _actor())
    _audit("lab.suspend", f"lab:{lab_id}", lab_id, f"suspended {name}'s lab")
    return _back(course_id, done="suspend", lab=str(lab_id))


@dashboard.post("/teach/labs/<id:lab_id>/reset")
def reset(lab_id: int):  # type: ignore[no-untyped-def]
    course_id, name = _taught_lab(lab_id)
    try:
        fresh = class_labs.reset(rt(), lab_id, _actor())
    except services.LaunchRefused:  # the learner's limits refuse a fresh lab: theirs is kept, and we say why
        return _back(course_id, done="reset-refused", lab=str(lab_id))
    _audit("lab.reset", f"lab:{lab_id}", lab_id, f"reset {name}'s lab; the new lab is {fresh.id}")
    return _back(course_id, done="reset", lab=str(lab_id))


@dashboard.post("/teach/activities/<id:activity_id>/suspend-all")
def suspend_activity(activity_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        activity = db.get(Activity, activity_id)
        if activity is None:
            abort(404)
        course_id = _taught_course(db, activity.course_id).id
    return _suspend_all(course_id, [activity_id], f"activity:{activity_id}")


@dashboard.post("/teach/courses/<id:course_id>/suspend-all")
def suspend_course(course_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        _taught_course(db, course_id)
        activity_ids = list(db.scalars(select(Activity.id).where(Activity.course_id == course_id)))
    return _suspend_all(course_id, activity_ids, f"course:{course_id}")


def _suspend_all(course_id: int, activity_ids: list[int], target: str):  # type: ignore[no-untyped-def]
    result = class_labs.suspend_all(rt(), activity_ids, _actor())
    detail = f"{len(result.suspended)} suspended, {len(result.skipped)} skipped"
    _audit("labs.suspend_all", target, None, detail + (f": labs {result.suspended}" if result.suspended else ""))
    return _back(course_id, suspended=str(len(result.suspended)), skipped=str(len(result.skipped)))


def _taught_course(db: Session, course_id: int) -> Course:
    """The course, if the signed-in user teaches it (session and database agree); 404 otherwise."""
    found = db.get(Course, course_id)
    user_id = session.get("user_id")
    if found is None or user_id is None or course_id not in session.get("instructor_courses", []):
        abort(404)
    if not services.is_instructor(db, course_id, user_id):
        abort(404)
    return found


def _taught_lab(lab_id: int) -> tuple[int, str]:
    """The course and learner name of a lab of a course the signed-in user teaches; 404 otherwise."""
    with rt().session() as db:
        lab = db.get(Lab, lab_id)
        if lab is None:
            abort(404)
        course_id = _taught_course(db, lab.activity.course_id).id
        return course_id, lab.user.name or lab.user.subject


def _actor() -> str:
    return f"instructor:{session['user_id']}"


def _audit(action: str, target: str, lab_id: int | None, detail: str) -> None:
    """One audit row per action, after it was accepted (a refused action raised before this)."""
    with rt().session() as db:
        audit.record(db, _actor(), action, target=target, lab_id=lab_id, detail=detail, address=request.remote_addr or "")
        db.commit()


def _shown(rows: list[dict[str, Any]], state: str, sort: str) -> list[dict[str, Any]]:
    """The rows the filter keeps ("none": no lab yet), most recently active first when asked."""
    if state:
        rows = [row for row in rows if (row["state"] or "none") == state]
    if sort == "last_activity":
        rows = sorted(rows, key=lambda row: row["last_activity"], reverse=True)
    return rows


def _notice(db: Session, course_id: int, args: Any) -> str:
    """The sentence saying what the last action did (the actions redirect here with it in the query).
    The learner's name is read from the lab, not the query, so a crafted link cannot put words here."""
    lab = db.get(Lab, int(args["lab"])) if args.get("lab", "").isdigit() else None
    learner = (lab.user.name or lab.user.subject) if lab is not None and lab.activity.course_id == course_id else ""
    if args.get("done") in ("suspend", "reset", "reset-refused") and not learner:
        return ""
    if args.get("done") == "reset-refused" and lab is not None:
        told = launch_gate.refusal_for(db, lab.user_id, lab.activity_id, f"user:{lab.user_id}") or "(their limits allow it again now)"
        return f"{learner}'s lab was not reset, and the lab they have is kept: the activity's limits would refuse them a fresh one. They are told: {told}"
    if args.get("done") == "suspend":
        return f"{learner}'s lab is being suspended. It resumes, as it was, when they open it again."
    if args.get("done") == "reset":
        return f"{learner}'s lab is being reset: a fresh lab from the activity's image is starting for them."
    if args.get("done") == "scheduled" and args.get("session", "").isdigit():
        found = db.get(ClassSession, int(args["session"]))
        if found is None or found.activity.course_id != course_id:
            return ""
        warm = f"; {found.warm_pool} labs start at {class_schedule.warms_at(found):%H:%M} UTC" if found.warm_pool else ""
        return f"Class session of {found.activity.title} scheduled for {found.starts_at:%Y-%m-%d %H:%M} UTC{warm}."
    if args.get("done") == "cancelled" and args.get("labs", "").isdigit():
        labs = int(args["labs"])
        return f"The class session was cancelled; {labs} unused pre-warmed lab{'' if labs == 1 else 's'} deleted."
    suspended, skipped = args.get("suspended", ""), args.get("skipped", "")
    if suspended.isdigit() and skipped.isdigit():
        return f"{int(suspended)} suspended, {int(skipped)} skipped (not running)."
    return ""


def _back(course_id: int, anchor: str = "", **notice: str):  # type: ignore[no-untyped-def]
    return redirect(url_for("dashboard.course", course_id=course_id, **notice) + (f"#{anchor}" if anchor else ""), 303)
