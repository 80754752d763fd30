"""The instructor view of one activity, reached by a launch with a staff role: who opened a lab, in which
state it is, and the class roster from the LMS's Names and Role Provisioning Service."""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from sqlalchemy import select

from broker import services
from broker.models import Activity, Lab, Membership, User
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
        return render_template(
            "lti/instructor.html", activity=found, rows=_rows(db, found), roster=roster, roster_error=roster_error,
            newer=services.newer_image(db, found), updated=request.args.get("updated"),
        )


@instructor.post("/teach/activities/<id:activity_id>/image")
def update_image(activity_id: int):  # type: ignore[no-untyped-def]
    """Move this activity to the newest version of its lab image."""
    with rt().session() as db:
        found = db.get(Activity, activity_id)
        if found is None or found.course_id not in session.get("instructor_courses", []):
            abort(404)
    version = services.update_activity_image(rt(), activity_id)
    return redirect(url_for("instructor.activity", activity_id=activity_id, updated=version or "current"))


def _roster(activity_id: int) -> tuple[list[dict[str, str]], str]:
    """The class list from the LMS (NRPS, every page), fetched only when the instructor asks: it is a call
    to the LMS, bounded by `lti_http_timeout` per page."""
    try:
        members = nrps.roster(rt(), activity_id)
    except ServiceError as exc:
        return [], f"The LMS did not give the class roster: {exc}"
    return [dict(name=m.name or m.email or m.user_id, view=view_for(m.roles), status=m.status) for m in members], ""


def _rows(db, activity: Activity) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    labs = {lab.user_id: lab for lab in db.scalars(select(Lab).where(Lab.activity_id == activity.id).order_by(Lab.id))}
    members = db.execute(
        select(Membership, User).join(User, User.id == Membership.user_id).where(Membership.course_id == activity.course_id).order_by(User.name)
    ).all()
    return [
        dict(
            name=user.name, role=member.role, test_user=member.test_user,
            state=labs[user.id].state if user.id in labs else None,
            lab_id=labs[user.id].id if user.id in labs else None,
            last_active=labs[user.id].last_active_at.strftime("%Y-%m-%d %H:%M UTC") if user.id in labs else None,
        )
        for member, user in members
    ]
