"""broker.class_schedule on both databases, with a movable clock: scheduling is validated (nothing stored
on a refusal), the warm-up starts the labs of the likeliest learners through the normal launch path when
its time comes and only once (even with two schedulers racing), the learner's launch finds the lab
running, and pre-warmed labs nobody used are held until class and then suspended. Jobs run on the real rq
queues with an in-process SimpleWorker against the fake backend.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Iterator

import pytest
from sqlalchemy import select

from broker import backend_ops, class_schedule, schedule, services
from broker.class_schedule import ScheduleError
from broker.activity import record_keepalive
from broker.clock import set_clock, utcnow
from broker.models import AuditEvent, ClassSession, Lab, LabEvent, Membership, User
from broker.runtime import Runtime
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import World

TEACHER = "instructor:99"


class Clock:
    """The broker's "now", standing still until the test moves it: an in-process worker that takes a while
    (rq's teardown can wait up to a minute for its pub/sub thread) must not move the class's clock."""

    def __init__(self) -> None:
        self.at = utcnow().replace(microsecond=0)

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Iterator[Clock]:
    frozen = Clock()
    set_clock(frozen.now)
    yield frozen
    set_clock(None)


def enrol(rt: Runtime, world: World, subject: str, minutes_ago: int, role: str = "learner", test_user: bool = False) -> int:
    """A member of the world's course who last launched into it `minutes_ago` minutes ago."""
    with rt.session() as session:
        user = session.scalar(select(User).where(User.subject == subject)) or User(issuer="test", subject=subject, name=subject)
        session.add(user)
        session.flush()
        session.add(Membership(course_id=world.course_id, user_id=user.id, role=role, test_user=test_user,
                               last_launch_at=utcnow() - timedelta(minutes=minutes_ago)))
        session.commit()
        return user.id


@pytest.fixture
def klass(rt: Runtime, world: World) -> dict[str, int]:
    """Four learners (learner-1 most recently active, then 2, 3, 4), a test student and an instructor."""
    people = {f"learner-{n}": enrol(rt, world, f"learner-{n}", minutes_ago=n * 10) for n in (1, 2, 3, 4)}
    people["test-student"] = enrol(rt, world, "test-student", minutes_ago=0, test_user=True)
    people["teacher"] = enrol(rt, world, "teacher", minutes_ago=0, role="instructor")
    return people


def schedule_in(rt: Runtime, world: World, minutes: int, pool: int, lead: int = 10, duration: int = 60) -> ClassSession:
    starts = utcnow() + timedelta(minutes=minutes)
    return class_schedule.add(rt, world.activity_id, starts, duration, lead, pool, TEACHER)


def labs_of(rt: Runtime, world: World) -> dict[int, Lab]:
    """Each user's live lab of the activity, by user id."""
    with rt.session() as session:
        labs = session.scalars(select(Lab).where(Lab.activity_id == world.activity_id, Lab.state.not_in(("deleted", "failed"))))
        found = {lab.user_id: lab for lab in labs}
        session.expunge_all()
        return found


def audit(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def stored(rt: Runtime, session_id: int) -> ClassSession | None:
    with rt.session() as session:
        found = session.get(ClassSession, session_id)
        if found is not None:
            session.expunge(found)
        return found


# -- scheduling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("starts_in, duration, lead, pool, message", [
    (-5, 60, 10, 1, "The session must start in the future"),
    (60, 5, 10, 1, "The length must be 10 to 600 minutes, not 5."),
    (60, 601, 10, 1, "The length must be 10 to 600 minutes, not 601."),
    (60, 60, 241, 1, "The labs can be started 0 to 240 minutes before the start, not 241."),
    (60, 60, -1, 1, "The labs can be started 0 to 240 minutes before the start, not -1."),
    (60, 60, 10, 5, "The warm pool must be 0 to 4: LabDesk knows 4 learners in this course (those who have opened it). You asked for 5."),
    (60, 60, 10, -1, "The warm pool must be 0 to 4"),
    (60 * 24 * 400, 60, 10, 1, "The session must start within a year."),
])
def test_a_session_that_makes_no_sense_is_refused_with_the_reason(
    rt: Runtime, world: World, klass: dict[str, int], starts_in: int, duration: int, lead: int, pool: int, message: str
) -> None:
    with pytest.raises(ScheduleError) as refused:
        schedule_in(rt, world, starts_in, pool, lead=lead, duration=duration)
    assert message in str(refused.value)
    with rt.session() as session:
        assert session.scalars(select(ClassSession)).all() == [] and audit(rt, "class_session.add") == []


def test_a_session_is_listed_until_it_ends_and_the_same_start_twice_is_refused(rt: Runtime, world: World, klass: dict[str, int], clock: Clock) -> None:
    first = schedule_in(rt, world, 120, pool=2, duration=30)
    later = schedule_in(rt, world, 60 * 24, pool=4)
    with pytest.raises(ScheduleError, match="already starts at"):
        class_schedule.add(rt, world.activity_id, first.starts_at, 45, 5, 1, TEACHER)
    with rt.session() as session:
        assert [s.id for s in class_schedule.upcoming(session, world.activity_id)] == [first.id, later.id]
    [added, _] = audit(rt, "class_session.add")
    assert added.actor == TEACHER and added.target == f"class_session:{first.id}"
    assert "30 min, 2 labs warmed 10 min before" in added.detail

    clock.advance((120 + 31) * 60)  # the first session has ended
    with rt.session() as session:
        assert [s.id for s in class_schedule.upcoming(session, world.activity_id)] == [later.id]
    with pytest.raises(ScheduleError, match="has already ended"):
        class_schedule.cancel(rt, first.id, TEACHER)


# -- the warm-up ---------------------------------------------------------------------------------------------


def test_the_warm_up_starts_the_likeliest_learners_labs_once_when_its_time_comes(
    rt: Runtime, world: World, klass: dict[str, int], clock: Clock
) -> None:
    own = services.launch(rt, klass["learner-1"], world.activity_id, "user:1").id  # learner-1 already has a lab
    found = schedule_in(rt, world, 60, pool=2, lead=15)

    clock.advance(44 * 60)  # 16 minutes before: not yet
    assert class_schedule.prewarm_due(rt) == 0 and stored(rt, found.id).warmed_at is None
    clock.advance(60)  # 15 minutes before: the warm-up
    assert class_schedule.prewarm_due(rt) == 2
    assert class_schedule.prewarm_due(rt) == 0, "a session is warmed once"
    run_queued_jobs(rt)

    labs = labs_of(rt, world)
    warmed = {user for user, lab in labs.items() if lab.prewarmed_by == found.id}
    assert warmed == {klass["learner-2"], klass["learner-3"]}, "the most recently active learners without a lab"
    assert labs[klass["learner-1"]].id == own and labs[klass["learner-1"]].prewarmed_by is None
    assert all(labs[user].state == "running" for user in warmed)
    assert klass["test-student"] not in labs and klass["teacher"] not in labs
    done = stored(rt, found.id)
    assert done.warmed_count == 2 and done.warmed_at is not None
    [event] = audit(rt, "class_session.warm")
    assert event.actor == TEACHER and event.detail.startswith("2 of 2 labs pre-warmed")
    with rt.session() as session:
        reasons = session.scalars(select(LabEvent.reason).where(LabEvent.lab_id == labs[klass["learner-2"]].id, LabEvent.from_state == ""))
        assert list(reasons) == [f"pre-warmed for class session {found.id}"]

    # The learner comes: their launch returns the running lab, which is theirs from now on.
    lab = services.launch(rt, klass["learner-2"], world.activity_id, f"user:{klass['learner-2']}")
    assert lab.id == labs[klass["learner-2"]].id and lab.state == "running"
    assert labs_of(rt, world)[klass["learner-2"]].prewarmed_by is None


def test_two_schedulers_racing_warm_a_session_once(rt: Runtime, world: World, klass: dict[str, int], clock: Clock) -> None:
    found = schedule_in(rt, world, 10, pool=3, lead=10)
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def scheduler() -> None:
        barrier.wait()
        counts.append(class_schedule.prewarm_due(rt))

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counts) == [0, 3]
    assert len(audit(rt, "class_session.warm")) == 1 and stored(rt, found.id).warmed_count == 3


class Crash(BaseException):
    """The warm-up's process dying midway (not an error the warm-up could catch and log)."""


def test_a_warm_up_that_died_midway_is_finished_by_a_later_run_without_warming_anyone_twice(
    rt: Runtime, world: World, klass: dict[str, int], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = schedule_in(rt, world, 10, pool=3, lead=10)
    launch, calls = services.launch, []

    def dies_at_the_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) == 3:
            raise Crash()
        return launch(*args, **kwargs)

    monkeypatch.setattr(services, "launch", dies_at_the_third)
    with pytest.raises(Crash):
        class_schedule.prewarm_due(rt)
    monkeypatch.setattr(services, "launch", launch)
    assert len(labs_of(rt, world)) == 2
    assert class_schedule.prewarm_due(rt) == 0, "within its lease the warm-up may still be running elsewhere"

    clock.advance(class_schedule.WARM_LEASE.total_seconds() + 1)
    assert class_schedule.prewarm_due(rt) == 1, "only the missing lab is started"
    labs = labs_of(rt, world)
    assert set(labs) == {klass["learner-1"], klass["learner-2"], klass["learner-3"]}
    assert all(lab.prewarmed_by == found.id for lab in labs.values())
    assert stored(rt, found.id).warmed_count == 3
    assert audit(rt, "class_session.warm")[-1].detail.startswith("3 of 3 labs pre-warmed")
    assert class_schedule.prewarm_due(rt) == 0


def test_the_warm_up_takes_no_place_a_learner_would_wait_for(rt: Runtime, world: World, klass: dict[str, int], clock: Clock) -> None:
    services.launch(rt, klass["learner-1"], world.activity_id, "user:1")
    run_queued_jobs(rt)
    with rt.session() as session:
        backend_ops.set_capacity(session, "fake", 2, "admin:root")
    first = schedule_in(rt, world, 10, pool=3)
    assert class_schedule.prewarm_due(rt) == 1, "one place free of two"
    assert "1 of 3 labs pre-warmed (the backend's capacity)" in audit(rt, "class_session.warm")[0].detail

    with rt.session() as session:
        backend_ops.set_draining(session, "fake", True, "admin:root")
    second = schedule_in(rt, world, 11, pool=2, lead=11)
    assert class_schedule.prewarm_due(rt) == 0
    assert "0 of 2 labs pre-warmed (the backend is draining)" in audit(rt, "class_session.warm")[1].detail
    assert stored(rt, second.id).warmed_at is not None and stored(rt, first.id).warmed_count == 1


# -- pre-warmed labs nobody used ----------------------------------------------------------------------------


def test_unused_pre_warmed_labs_are_held_until_class_then_suspended(rt: Runtime, world: World, klass: dict[str, int], clock: Clock) -> None:
    found = schedule_in(rt, world, 30, pool=3, lead=30)  # warmed now, class in 30 minutes
    assert class_schedule.prewarm_due(rt) == 3
    run_queued_jobs(rt)
    labs = labs_of(rt, world)
    came, stayed_away, bookmarked = (labs[klass[f"learner-{n}"]].id for n in (1, 2, 3))

    clock.advance(5 * 60)  # past the activity's idle time (120 s), still before class
    assert schedule.suspend_idle(rt) == 0, "the idle sweep leaves pre-warmed labs to the class schedule, even run first"
    assert class_schedule.release_unused(rt) == 0
    assert schedule.suspend_idle(rt) == 0, "held for the class: nobody is late yet"
    services.launch(rt, klass["learner-1"], world.activity_id, "user:1")  # learner-1 arrives early
    record_keepalive(rt.redis, bookmarked)  # learner-3 opened the lab page from a bookmark, without a launch
    class_schedule.release_unused(rt)
    assert labs_of(rt, world)[klass["learner-3"]].prewarmed_by is None, "a lab its learner is at is theirs"

    clock.advance(25 * 60 + 60)  # class started a minute ago: within the idle time still
    record_keepalive(rt.redis, bookmarked)
    assert class_schedule.release_unused(rt) == 0 and lab_state(rt, stayed_away) == "running"
    clock.advance(90)  # starts_at + idle_suspend_after has passed
    assert class_schedule.release_unused(rt) == 1
    run_queued_jobs(rt)
    assert lab_state(rt, stayed_away) == "suspended"
    with rt.session() as session:
        why = session.execute(select(LabEvent.actor, LabEvent.reason).where(LabEvent.lab_id == stayed_away, LabEvent.to_state == "suspending")).one()
    assert why == ("class-session", "pre-warmed for a class session; its learner did not come")
    assert lab_state(rt, came) == "running" and lab_state(rt, bookmarked) == "running", "labs their learners came to are not the warm-up's"
    assert class_schedule.release_unused(rt) == 0, "nothing twice"
    assert labs_of(rt, world)[klass["learner-1"]].prewarmed_by is None
    assert stored(rt, found.id).warmed_count == 3


def test_a_pre_warmed_lab_still_waiting_when_class_starts_is_deleted(rt: Runtime, world: World, klass: dict[str, int], clock: Clock) -> None:
    found = schedule_in(rt, world, 10, pool=1, lead=10)
    assert class_schedule.prewarm_due(rt) == 1  # the job is queued but no worker takes it (a busy backend)
    lab = labs_of(rt, world)[klass["learner-1"]]
    assert lab.state == "requested" and lab.prewarmed_by == found.id
    clock.advance(10 * 60 + 121)
    assert class_schedule.release_unused(rt) == 1
    run_queued_jobs(rt)
    assert lab_state(rt, lab.id) == "deleted"


def test_cancelling_a_warmed_session_deletes_the_labs_nobody_used(rt: Runtime, world: World, klass: dict[str, int], clock: Clock) -> None:
    found = schedule_in(rt, world, 10, pool=2, lead=10)
    assert class_schedule.prewarm_due(rt) == 2
    run_queued_jobs(rt)
    labs = labs_of(rt, world)
    services.launch(rt, klass["learner-1"], world.activity_id, "user:1")  # learner-1 is using theirs

    assert class_schedule.cancel(rt, found.id, TEACHER, "10.0.0.1") == 1
    run_queued_jobs(rt)
    assert lab_state(rt, labs[klass["learner-2"]].id) == "deleted"
    assert lab_state(rt, labs[klass["learner-1"]].id) == "running", "a lab its learner came to is theirs"
    assert stored(rt, found.id) is None
    [event] = audit(rt, "class_session.cancel")
    assert (event.actor, event.address) == (TEACHER, "10.0.0.1") and "1 unused pre-warmed lab deleted" in event.detail
