"""Use cases called by the web and the CLI. They change the database and enqueue jobs; they never call
a backend (only workers do), so a slow cloud can never stall a page.
"""

from __future__ import annotations

from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import launch_gate
from broker.clock import utcnow
from broker.errors import InvalidTransition, LabDeskError, ServiceUnavailable
from broker.jobs import job_request
from broker.lifecycle import ALLOWED, LabState, Move, sources_of, transition
from broker.models import ENDED_STATES, Activity, Backend, Image, Lab, LabEvent, Membership, User
from broker.runtime import Runtime

S = LabState


class NotFound(LabDeskError):
    """The lab, activity or backend asked for does not exist."""


class LaunchRefused(LabDeskError):
    """The learner may not open this lab now; the message is written for them (the web shows it as is)."""


BACKEND_DISABLED = ("This lab cannot open right now: its lab machines have been switched off by the administrators. "
                    "Please try again later, or ask your instructor.")


def user_for(rt: Runtime, issuer: str, subject: str, name: str) -> int:
    """The id of the user an identity provider calls `subject`, created on first sign-in.

    Two first sign-ins at the same moment both try to insert; the unique (issuer, subject) constraint
    lets one win, and the other reads the winner's row.
    """
    with rt.session() as session:
        query = select(User.id).where(User.issuer == issuer, User.subject == subject)
        found = session.scalar(query)
        if found is not None:
            return found
        user = User(issuer=issuer, subject=subject, name=name)
        session.add(user)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return session.scalar(query)  # type: ignore[return-value]
        return user.id


def live_lab(session: Session, user_id: int, activity_id: int) -> Lab | None:
    """The learner's current lab for an activity, if any (failed and deleted labs do not count)."""
    return session.scalar(
        select(Lab).where(Lab.user_id == user_id, Lab.activity_id == activity_id, Lab.state.not_in(ENDED_STATES))
    )


def launch(rt: Runtime, user_id: int, activity_id: int, actor: str) -> Lab:
    """Open the learner's lab: create it, resume it if suspended, or return it as it is."""
    _require_queue(rt)
    with rt.session() as session:
        lab = live_lab(session, user_id, activity_id)
        if lab is None or lab.state == S.SUSPENDED:
            _refuse_if_backend_disabled(session, activity_id)
            launch_gate.check(session, user_id, activity_id, actor)  # trust level, weekly hours
        if lab is None:
            _clear_failed(rt, session, user_id, activity_id, actor)
            return _create(rt, session, user_id, activity_id, actor)
        if lab.prewarmed_by is not None:  # pre-warmed for a class session (broker.class_schedule): theirs now
            lab.prewarmed_by = None
            session.commit()
        if lab.state == S.SUSPENDED:
            _request(rt, session, lab, S.RESUMING, Move("learner came back", actor))
        return lab


def reset(rt: Runtime, user_id: int, lab_id: int) -> Lab:
    """Throw the learner's lab away and start a fresh one from the image (the lab page's "Reset lab")."""
    _require_queue(rt)
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.user_id != user_id or lab.state in ENDED_STATES:
            raise NotFound(f"no live lab {lab_id} of user {user_id}")
        activity_id, actor = lab.activity_id, f"user:{user_id}"
        _refuse_if_backend_disabled(session, activity_id)  # before the old lab goes: nothing could replace it
        launch_gate.check(session, user_id, activity_id, actor)  # likewise
        _request(rt, session, lab, S.DELETING, Move("learner reset the lab", actor))
    return launch(rt, user_id, activity_id, actor)


def _refuse_if_backend_disabled(session: Session, activity_id: int) -> None:
    """A disabled backend takes no new labs and resumes none (broker.backend_ops); a lab already running
    there is still returned as it is, and its labs can still be suspended and deleted."""
    enabled = session.scalar(select(Backend.enabled).join(Activity, Activity.backend_id == Backend.id).where(Activity.id == activity_id))
    if enabled is False:
        raise LaunchRefused(BACKEND_DISABLED)


def newer_image(session: Session, activity: Activity) -> Image | None:
    """The newest catalogue version of the activity's image, when it is newer than the one the activity
    uses: an activity stays on the version it was created with until an instructor moves it."""
    newest = session.scalar(select(Image).where(Image.slug == activity.image.slug).order_by(Image.version.desc()).limit(1))
    return newest if newest is not None and newest.version > activity.image.version else None


def update_activity_image(rt: Runtime, activity_id: int) -> int | None:
    """Move the activity to its image's newest version (labs already made keep theirs until reset);
    returns the new version, or None when it was already current."""
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise NotFound(f"no activity {activity_id}")
        newer = newer_image(session, activity)
        if newer is None:
            return None
        activity.image_id = newer.id
        session.commit()
        return newer.version


def is_instructor(session: Session, course_id: int, user_id: int) -> bool:
    """Whether the LMS last said this user teaches this course (instructor view, watching desktops)."""
    role = session.scalar(select(Membership.role).where(Membership.course_id == course_id, Membership.user_id == user_id))
    return role == "instructor"


def request_state(rt: Runtime, lab_id: int, target: LabState, actor: str, reason: str) -> Lab:
    """Ask for a lab to be suspended, resumed or deleted (admin, CLI, reaper); raises if not allowed now."""
    _require_queue(rt)
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None:
            raise NotFound(f"no lab {lab_id}")
        if target not in ALLOWED[S(lab.state)]:
            raise InvalidTransition(f"lab {lab_id} is {lab.state}; it cannot go to {target.value} now")
        _request(rt, session, lab, target, Move(reason, actor))
        return lab


def _create(rt: Runtime, session: Session, user_id: int, activity_id: int, actor: str) -> Lab:
    activity = session.get(Activity, activity_id)
    if activity is None:
        raise NotFound(f"no activity {activity_id}")
    now = utcnow()
    lab = Lab(
        user_id=user_id,
        activity_id=activity_id,
        backend_id=activity.backend_id,
        state=S.REQUESTED.value,
        deadline=now + timedelta(seconds=rt.settings.requested_deadline),
        last_active_at=now,
        state_changed_at=now,
    )
    session.add(lab)
    try:
        session.flush()
    except IntegrityError:  # a concurrent launch (double click) created it first
        session.rollback()
        existing = live_lab(session, user_id, activity_id)
        if existing is None:
            raise
        return existing
    session.add(LabEvent(lab_id=lab.id, from_state="", to_state=S.REQUESTED.value, reason="learner launched", actor=actor, at=now))
    session.commit()
    try:
        _enqueue(rt, lab)
    except ServiceUnavailable:
        session.delete(lab)  # nothing half-way: the learner can simply launch again
        session.execute(LabEvent.__table__.delete().where(LabEvent.lab_id == lab.id))
        session.commit()
        raise
    return lab


def _clear_failed(rt: Runtime, session: Session, user_id: int, activity_id: int, actor: str) -> None:
    """A relaunch after a failure starts afresh; the failed lab's leftovers are deleted."""
    failed = session.scalars(
        select(Lab).where(Lab.user_id == user_id, Lab.activity_id == activity_id, Lab.state == S.FAILED.value)
    ).all()
    for lab in failed:
        _request(rt, session, lab, S.DELETING, Move("learner relaunched after a failure", actor))


def _request(rt: Runtime, session: Session, lab: Lab, target: LabState, move: Move) -> None:
    if transition(session, rt.settings, lab.id, sources_of(target), target, move, message=""):
        session.refresh(lab)
        _enqueue(rt, lab)


def _enqueue(rt: Runtime, lab: Lab) -> None:
    try:
        rt.dispatcher.enqueue(job_request(lab, lab.backend.queue_name))
    except RedisError as exc:
        raise ServiceUnavailable(f"the job queue is unavailable: {exc}") from exc


def _require_queue(rt: Runtime) -> None:
    """Refuse early, before writing anything, when the queue cannot take the job."""
    try:
        rt.redis.ping()
    except RedisError as exc:
        raise ServiceUnavailable(f"the job queue is unavailable: {exc}") from exc
