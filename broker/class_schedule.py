"""Class sessions: an instructor schedules a class meeting of an activity, and shortly before it starts
LabDesk starts the labs of the learners most likely to come, so their desktops are ready when they arrive.

Starting a lab takes minutes on a real cloud; a class of thirty launching at 9:00 sharp all wait at
once. A session's warm-up (`starts_at - lead_minutes`) starts up to `warm_pool` labs through the normal
launch path (`broker.services.launch`), so a pre-warmed lab waits for a draining or full backend and for a
GPU exactly as a learner's own launch would; the labs are marked `prewarmed_by` the session until their
learner launches (services.launch clears the mark, and returns the running lab as it is).

Who is warmed: the course's learners (role "learner", not the LMS's test student) who have no live lab of
the activity, most recently active in the course first (their last launch into any of its activities):
the people who came last time are the likeliest to come again. Pre-warming never takes more than the
backend can give without making anyone wait: none while it drains, no more than its free places when an
admin set a capacity, and for a GPU image no more than the GPUs free now with nobody in line.

A pre-warmed lab nobody used is held until `starts_at + the activity's idle_suspend_after` (the idle
sweep would otherwise suspend it minutes after it started, before class), then suspended like any idle
lab; one still waiting for a place or a GPU by then is deleted, as it would only take a place from a
learner who actually came. Cost of a session whose learners all stay away: lead + idle time per lab.

A warm-up whose process dies midway (a worker killed, a deploy) is not lost: the claim marks the session
`WARMING`, and a claim older than `WARM_LEASE` that never finished is taken again by the next run, which
starts only the labs still missing (it counts the labs the session already started by their first event).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from broker import activity as presence, audit, services
from broker.backend_ops import HOLDING
from broker.clock import utcnow
from broker.errors import LabDeskError
from broker.jobs import job_request
from broker.lifecycle import LabState, Move, transition_many
from broker.models import ENDED_STATES, Activity, Backend, ClassSession, GpuRequest, GpuSlot, Lab, LabEvent, Membership, User
from broker.runtime import Runtime

S = LabState
log = logging.getLogger(__name__)

LEAD_MINUTES = (0, 240)
DURATION_MINUTES = (10, 600)
MAX_WARM_POOL = 200  # one session never starts more labs than this, whatever the course's size
MAX_AHEAD = timedelta(days=366)  # a session is scheduled at most a year ahead
WARMING = -1  # `warmed_count` while a warm-up is under way; its final count replaces it
WARM_LEASE = timedelta(minutes=5)  # a warm-up takes seconds: one claimed longer ago than this died midway


class ScheduleError(LabDeskError):
    """A session that cannot be scheduled or cancelled as asked; the message says why, for the instructor."""


@dataclass(frozen=True)
class Warmed:
    """What one session's warm-up did: the labs it started, and why it started fewer than asked ("" if not)."""

    session_id: int
    lab_ids: list[int]
    limited_by: str = ""


# -- scheduling (the instructor's course dashboard) ------------------------------------------------------


def known_learners(session: Session, course_id: int) -> int:
    """How many learners LabDesk knows in the course: those who launched it at least once (test student aside)."""
    return session.scalar(
        select(func.count()).select_from(Membership)
        .where(Membership.course_id == course_id, Membership.role == "learner", Membership.test_user.is_(False))
    ) or 0


def add(rt: Runtime, activity_id: int, starts_at: datetime, duration_minutes: int, lead_minutes: int,
        warm_pool: int, actor: str, address: str = "") -> ClassSession:
    """Schedule a session (times naive UTC); raises ScheduleError with a sentence for the instructor."""
    now = utcnow()
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise services.NotFound(f"no activity {activity_id}")
        _check(session, activity, now, starts_at, duration_minutes, lead_minutes, warm_pool)
        found = ClassSession(
            activity_id=activity_id, starts_at=starts_at.replace(second=0, microsecond=0), duration_minutes=duration_minutes,
            lead_minutes=lead_minutes, warm_pool=warm_pool, created_by=actor, created_at=now, warmed_count=0,
        )
        session.add(found)
        session.flush()
        detail = f"{activity.title}: starts {_shown(found.starts_at)}, {duration_minutes} min, {warm_pool} labs warmed {lead_minutes} min before"
        audit.record(session, actor, "class_session.add", target=f"class_session:{found.id}", detail=detail, address=address)
        session.commit()
        session.refresh(found)
        session.expunge(found)
        return found


def _check(session: Session, activity: Activity, now: datetime, starts_at: datetime, duration: int, lead: int, pool: int) -> None:
    if starts_at <= now:
        raise ScheduleError(f"The session must start in the future: {_shown(starts_at)} has passed (it is {_shown(now)} now).")
    if starts_at > now + MAX_AHEAD:
        raise ScheduleError("The session must start within a year.")
    if not DURATION_MINUTES[0] <= duration <= DURATION_MINUTES[1]:
        raise ScheduleError(f"The length must be {DURATION_MINUTES[0]} to {DURATION_MINUTES[1]} minutes, not {duration}.")
    if not LEAD_MINUTES[0] <= lead <= LEAD_MINUTES[1]:
        raise ScheduleError(f"The labs can be started {LEAD_MINUTES[0]} to {LEAD_MINUTES[1]} minutes before the start, not {lead}.")
    known = known_learners(session, activity.course_id)
    most = min(known, MAX_WARM_POOL)
    if pool < 0 or pool > most:
        why = (f"LabDesk knows {known} learner{'' if known == 1 else 's'} in this course (those who have opened it)"
               if known <= MAX_WARM_POOL else f"one session starts at most {MAX_WARM_POOL} labs")
        raise ScheduleError(f"The warm pool must be 0 to {most}: {why}. You asked for {pool}.")
    same = session.scalar(
        select(ClassSession.id).where(ClassSession.activity_id == activity.id, ClassSession.starts_at == starts_at.replace(second=0, microsecond=0))
    )
    if same is not None:
        raise ScheduleError(f"A session of {activity.title} already starts at {_shown(starts_at)}.")


def upcoming(session: Session, activity_id: int) -> list[ClassSession]:
    """The activity's sessions that have not ended yet, soonest first."""
    now = utcnow()
    found = session.scalars(
        select(ClassSession).where(ClassSession.activity_id == activity_id, ClassSession.starts_at > now - timedelta(minutes=DURATION_MINUTES[1]))
        .order_by(ClassSession.starts_at, ClassSession.id)
    ).all()
    return [s for s in found if ends_at(s) > now]


def ends_at(found: ClassSession) -> datetime:
    return found.starts_at + timedelta(minutes=found.duration_minutes)


def warms_at(found: ClassSession) -> datetime:
    return found.starts_at - timedelta(minutes=found.lead_minutes)


def cancel(rt: Runtime, session_id: int, actor: str, address: str = "") -> int:
    """Cancel a session that has not ended; the labs it pre-warmed that no learner has used yet are deleted
    (nobody has worked in them, and the class is not happening). Returns how many labs that was."""
    with rt.session() as session:
        found = session.get(ClassSession, session_id)
        if found is None:
            raise services.NotFound(f"no class session {session_id}")
        if ends_at(found) <= utcnow():
            raise ScheduleError(f"The session of {_shown(found.starts_at)} has already ended; there is nothing to cancel.")
        unused = session.scalars(select(Lab.id).where(Lab.prewarmed_by == session_id, Lab.state.not_in(ENDED_STATES))).all()
        starts, title = found.starts_at, found.activity.title
    deleted = 0
    for lab_id in unused:
        try:
            services.request_state(rt, lab_id, S.DELETING, actor, f"class session {session_id} cancelled; its learner had not come")
            deleted += 1
        except LabDeskError:
            log.info("lab %s of cancelled class session %s could not be deleted now", lab_id, session_id)
    with rt.session() as session:
        session.execute(update(Lab).where(Lab.prewarmed_by == session_id).values(prewarmed_by=None))
        session.execute(ClassSession.__table__.delete().where(ClassSession.id == session_id))
        detail = f"{title}: the session of {_shown(starts)} cancelled; {deleted} unused pre-warmed lab{'' if deleted == 1 else 's'} deleted"
        audit.record(session, actor, "class_session.cancel", target=f"class_session:{session_id}", detail=detail, address=address)
        session.commit()
    return deleted


# -- the warm-up (a periodic job, broker.schedule) --------------------------------------------------------


def prewarm_due(rt: Runtime) -> int:
    """Warm every session whose warm-up time has come and that has not been warmed; returns labs started.

    Each session is claimed first with one compare-and-set UPDATE of `warmed_at`, so two schedulers (or a
    job run twice) never warm the same session twice. A session whose end has passed is not warmed."""
    now = utcnow()
    with rt.session() as session:
        candidates = session.scalars(
            select(ClassSession).where(
                _unclaimed(now),
                ClassSession.starts_at <= now + timedelta(minutes=LEAD_MINUTES[1]),
                ClassSession.starts_at > now - timedelta(minutes=DURATION_MINUTES[1]),
            ).order_by(ClassSession.starts_at, ClassSession.id)
        ).all()
        due = [s.id for s in candidates if warms_at(s) <= now < ends_at(s)]
    return sum(len(warmed.lab_ids) for warmed in (_warm(rt, session_id) for session_id in due) if warmed is not None)


def _unclaimed(now: datetime):  # type: ignore[no-untyped-def]
    """Never warmed, or claimed by a warm-up that died before it finished (its lease has run out)."""
    abandoned = and_(ClassSession.warmed_count == WARMING, ClassSession.warmed_at < now - WARM_LEASE)
    return or_(ClassSession.warmed_at.is_(None), abandoned)


def _warm(rt: Runtime, session_id: int) -> Warmed | None:
    now = utcnow()
    with rt.session() as session:
        claimed = session.execute(
            update(ClassSession).where(ClassSession.id == session_id, _unclaimed(now)).values(warmed_at=now, warmed_count=WARMING)
        ).rowcount == 1
        session.commit()
        if not claimed:
            return None
        found = session.get(ClassSession, session_id)
        activity = found.activity
        already = _already_warmed(session, session_id)
        learners = _likeliest_learners(session, activity, found.warm_pool - already)
        room, limited_by = _room(session, activity)
        actor, pool, activity_id = found.created_by, found.warm_pool, activity.id
    chosen = learners[:room]
    if len(learners) > room:
        reason = limited_by
    else:
        reason = "" if already + len(learners) == pool else "fewer learners without a lab of it"
    started = [lab_id for lab_id in (_start(rt, user_id, activity_id, session_id, actor) for user_id in chosen) if lab_id is not None]
    with rt.session() as session:
        total = already + len(started)
        session.execute(update(ClassSession).where(ClassSession.id == session_id).values(warmed_count=total))
        detail = f"{total} of {pool} labs pre-warmed" + (f" ({reason})" if reason and total < pool else "")
        audit.record(session, actor, "class_session.warm", target=f"class_session:{session_id}", detail=detail + (f": labs {started}" if started else ""))
        session.commit()
    return Warmed(session_id, started, reason)


def _already_warmed(session: Session, session_id: int) -> int:
    """Labs an earlier, interrupted run of this session's warm-up started (their learners may have come since)."""
    return session.scalar(
        select(func.count()).select_from(LabEvent).where(LabEvent.from_state == "", LabEvent.reason == _warm_reason(session_id))
    ) or 0


def _warm_reason(session_id: int) -> str:
    return f"pre-warmed for class session {session_id}"


def _likeliest_learners(session: Session, activity: Activity, pool: int) -> list[int]:
    """Up to `pool` learners of the course with no live lab of the activity, most recently active in the
    course first (their last launch into it), then by id so the choice is stable."""
    if pool <= 0:
        return []
    has_lab = select(Lab.user_id).where(Lab.activity_id == activity.id, Lab.state.not_in(ENDED_STATES))
    return list(session.scalars(
        select(Membership.user_id).join(User, User.id == Membership.user_id)
        .where(Membership.course_id == activity.course_id, Membership.role == "learner", Membership.test_user.is_(False),
               Membership.user_id.not_in(has_lab))
        .order_by(Membership.last_launch_at.desc(), Membership.user_id).limit(pool)
    ))


def _room(session: Session, activity: Activity) -> tuple[int, str]:
    """How many labs the activity's backend can start now without anyone waiting, and what limits it."""
    backend = session.get(Backend, activity.backend_id)
    room, limited_by = MAX_WARM_POOL, ""
    if backend.draining:
        return 0, "the backend is draining"
    if backend.capacity is not None:
        holding = session.scalar(select(func.count()).select_from(Lab).where(Lab.backend_id == backend.id, Lab.state.in_(HOLDING))) or 0
        room, limited_by = max(backend.capacity - holding, 0), "the backend's capacity"
    if _wants_gpu(activity):
        free = session.scalar(
            select(func.count()).select_from(GpuSlot)
            .where(GpuSlot.backend_id == backend.id, GpuSlot.present.is_(True), GpuSlot.lab_id.is_(None))
        ) or 0
        waiting = session.scalar(
            select(func.count()).select_from(GpuRequest).where(GpuRequest.backend_id == backend.id, GpuRequest.released_at.is_(None))
        ) or 0
        gpus_free = max(free - waiting, 0)
        if gpus_free < room:
            room, limited_by = gpus_free, "GPUs free now"
    return room, limited_by


def _wants_gpu(activity: Activity) -> bool:
    """Whether the activity's image asks for a GPU (as `broker.gpus.wanted_model` reads it for a lab)."""
    gpu = ((activity.image.spec or {}).get("resources") or {}).get("gpu", False)
    return gpu is True or (isinstance(gpu, str) and bool(gpu))


def _start(rt: Runtime, user_id: int, activity_id: int, session_id: int, actor: str) -> int | None:
    """Launch the learner's lab as their own launch would, and mark it pre-warmed by the session."""
    try:
        lab = services.launch(rt, user_id, activity_id, actor)
    except LabDeskError:
        log.warning("class session %s: the lab of user %s could not be started", session_id, user_id, exc_info=True)
        return None
    with rt.session() as session:
        marked = session.execute(
            update(Lab).where(Lab.id == lab.id, Lab.state == S.REQUESTED.value, Lab.prewarmed_by.is_(None)).values(prewarmed_by=session_id)
        ).rowcount == 1
        if marked:
            session.execute(
                update(LabEvent).where(LabEvent.lab_id == lab.id, LabEvent.from_state == "")
                .values(reason=_warm_reason(session_id))
            )
        session.commit()
    return lab.id if marked else None


# -- pre-warmed labs nobody used (a periodic job, broker.schedule) ----------------------------------------


def release_unused(rt: Runtime) -> int:
    """Hold pre-warmed labs until their session's start plus the activity's idle time, then let them go:
    running ones whose learner has not come are suspended, ones still waiting to start are deleted. A lab
    whose learner reached it without a launch (a bookmark: keepalives, no launch) is theirs: unmarked.
    Returns how many labs were suspended or deleted."""
    now = utcnow()
    with rt.session() as session:
        presence.flush(rt.redis, session, rt.settings.leave_grace)  # fold in keepalives first, as the idle sweep does
        rows = session.execute(
            select(Lab.id, Lab.state, Lab.idle_deadline, Lab.last_active_at, Lab.state_changed_at, ClassSession.starts_at, Activity.idle_suspend_after)
            .join(ClassSession, ClassSession.id == Lab.prewarmed_by).join(Activity, Activity.id == Lab.activity_id)
            .where(Lab.prewarmed_by.is_not(None), Lab.state.in_([S.RUNNING.value, S.REQUESTED.value]))
        ).all()
        hold: dict[datetime, list[int]] = {}
        came, suspend, drop = [], [], []
        for lab_id, state, idle_deadline, last_active_at, running_since, starts_at, idle in rows:
            until = starts_at + timedelta(seconds=idle)
            if state == S.RUNNING.value and _seen_since(last_active_at, running_since):
                came.append(lab_id)
            elif until > now:
                if state == S.RUNNING.value and (idle_deadline is None or idle_deadline < until):
                    hold.setdefault(until, []).append(lab_id)
            elif state == S.RUNNING.value and (idle_deadline is None or idle_deadline <= now):
                suspend.append(lab_id)
            elif state == S.REQUESTED.value:
                drop.append(lab_id)
        for until, lab_ids in hold.items():
            session.execute(update(Lab).where(Lab.id.in_(lab_ids), Lab.state == S.RUNNING.value).values(idle_deadline=until))
        if came:
            session.execute(update(Lab).where(Lab.id.in_(came)).values(prewarmed_by=None))
        session.commit()
        moved = transition_many(session, rt.settings, suspend, S.RUNNING, S.SUSPENDING, Move("pre-warmed for a class session; its learner did not come", "class-session"))
        moved += transition_many(session, rt.settings, drop, S.REQUESTED, S.DELETING, Move("pre-warmed for a class session; still waiting when it started", "class-session"))
        _enqueue(rt, session, moved)
        return len(moved)


def _seen_since(last_active_at: datetime | None, running_since: datetime | None) -> bool:
    """Whether a keepalive reached the lab after it started running: arriving in `running` sets both
    times together; a keepalive (folded in whole seconds) moves `last_active_at` past it."""
    return last_active_at is not None and running_since is not None and last_active_at > running_since + timedelta(seconds=1)


def _enqueue(rt: Runtime, session: Session, lab_ids: list[int]) -> None:
    if not lab_ids:
        return
    labs = session.scalars(select(Lab).where(Lab.id.in_(lab_ids)).execution_options(populate_existing=True)).all()
    rt.dispatcher.enqueue_many([job_request(lab, lab.backend.queue_name) for lab in labs])


def _shown(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
