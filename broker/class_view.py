"""What an instructor sees of a class, read from the database: each member's newest lab of an activity,
every learner's attempts and current score, and both together per learner for the course dashboard.

The per-activity instructor view (lti/instructor.py) and the course dashboard (lti/dashboard.py) read
the same rows from here, so the two pages can never disagree about a learner's lab or score.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import attempt_views
from broker.models import Activity, Lab, Membership, User
from broker.runtime import Runtime

TIME_FORMAT = "%Y-%m-%d %H:%M UTC"


def newest_labs(session: Session, activity_id: int) -> dict[int, Lab]:
    """Each user's newest lab of the activity (by id), ended ones included: a learner whose lab was
    reaped still shows "deleted" rather than "not opened"."""
    labs = session.scalars(select(Lab).where(Lab.activity_id == activity_id).order_by(Lab.id))
    return {lab.user_id: lab for lab in labs}


def members(session: Session, course_id: int) -> list[tuple[Membership, User]]:
    """The course's members as the LMS last stated them at launch, by name."""
    rows = session.execute(
        select(Membership, User).join(User, User.id == Membership.user_id)
        .where(Membership.course_id == course_id).order_by(User.name, User.id)
    ).all()
    return [(member, user) for member, user in rows]


def lab_rows(session: Session, activity: Activity) -> list[dict[str, Any]]:
    """Every member of the course with the state of their newest lab of this activity (None: not opened)."""
    labs = newest_labs(session, activity.id)
    return [
        dict(
            user_id=user.id, name=user.name, role=member.role, test_user=member.test_user,
            state=labs[user.id].state if user.id in labs else None,
            lab_id=labs[user.id].id if user.id in labs else None,
            last_active=labs[user.id].last_active_at.strftime(TIME_FORMAT) if user.id in labs else None,
        )
        for member, user in members(session, activity.course_id)
    ]


def grade_rows(rt: Runtime, session: Session, activity: Activity) -> list[dict[str, Any]]:
    """Every learner's attempts and current score (`broker.attempt_views`), then the course's learners
    who have not checked their work yet, with no attempts."""
    graded = attempt_views.activity_attempts(rt, activity.id)
    seen = {row["user_id"] for row in graded}
    waiting = [user for member, user in members(session, activity.course_id) if member.role == "learner"]
    return graded + [dict(user_id=u.id, name=u.name or u.subject, attempts=[], score=None) for u in waiting if u.id not in seen]


def learner_rows(rt: Runtime, session: Session, activity: Activity) -> list[dict[str, Any]]:
    """One row per learner of the course (and anyone else with a lab of the activity): their lab's state
    and id, their last activity (the lab's last keepalive, else their last launch), current score and
    number of check attempts. Instructors without a lab of their own are left out: they are not the class."""
    labs = newest_labs(session, activity.id)
    grades = {row["user_id"]: row for row in attempt_views.activity_attempts(rt, activity.id)}
    rows = []
    for member, user in members(session, activity.course_id):
        if member.role != "learner" and user.id not in labs:
            continue
        lab, graded = labs.get(user.id), grades.get(user.id, {})
        rows.append(dict(
            user_id=user.id, name=user.name or user.subject, test_user=member.test_user,
            lab_id=lab.id if lab else None, state=lab.state if lab else None,
            last_activity=_last_activity(lab, member), score=graded.get("score"),
            attempts=len(graded.get("attempts", [])),
        ))
    return rows


def _last_activity(lab: Lab | None, member: Membership) -> datetime:
    """The later of the lab's last sign of life and the learner's last launch into the course."""
    if lab is None:
        return member.last_launch_at
    return max(lab.last_active_at, member.last_launch_at)
