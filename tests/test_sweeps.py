"""The periodic sweeps, on both databases, with a simulated clock: suspend idle labs (keepalives, leaves,
per-activity thresholds, hundreds at once), reap old labs, expire stuck ones, reconcile backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest
from rq import Queue
from sqlalchemy import event, insert, select

from broker import schedule
from broker.activity import record_keepalive, record_leave
from broker.clock import set_clock, utcnow
from broker.connector import LabSpec
from broker.db import engine_for
from broker.models import Activity, Backend, Lab, LabEvent, User
from broker.runtime import Runtime
from tests.support.world import World

QUEUE = "labdesk-backend-fake"


@dataclass
class Clock:
    """The broker's simulated "now"; tests move it instead of sleeping."""

    now: datetime = field(default_factory=lambda: utcnow().replace(microsecond=0))

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    simulated = Clock()
    set_clock(lambda: simulated.now)
    yield simulated
    set_clock(None)


# -- building labs in bulk -----------------------------------------------------------------------------
def add_activity(rt: Runtime, world: World, link: str, **economics: Any) -> int:
    with rt.session() as session:
        template = session.get(Activity, world.activity_id)
        activity = Activity(
            course_id=world.course_id, resource_link_id=link, title=link, image_id=template.image_id,
            backend_id=world.backend_id, **economics,
        )
        session.add(activity)
        session.commit()
        return activity.id


def add_labs(rt: Runtime, world: World, count: int, state: str, activity_id: int | None = None, **fields: Any) -> list[int]:
    """`count` labs of fresh learners in `state`; running ones look as a worker leaves them."""
    now = utcnow()
    with rt.session() as session:
        first = session.scalar(select(User.id).order_by(User.id.desc())) or 0
        session.execute(insert(User), [{"issuer": "test", "subject": f"bulk-{first + n}"} for n in range(count)])
        users = session.scalars(select(User.id).where(User.id > first).order_by(User.id)).all()
        activity = session.get(Activity, activity_id or world.activity_id)
        defaults: dict[str, Any] = dict(last_active_at=now, state_changed_at=now, created_at=now)
        if state in ("running", "suspended"):
            defaults["idle_deadline"] = now + timedelta(seconds=activity.idle_suspend_after)
        rows = [
            {"user_id": uid, "activity_id": activity.id, "backend_id": world.backend_id, "state": state, **defaults, **fields}
            for uid in users
        ]
        ids = session.scalars(insert(Lab).returning(Lab.id), rows).all()
        session.commit()
        return sorted(ids)


def states(rt: Runtime, lab_ids: list[int]) -> dict[int, str]:
    with rt.session() as session:
        return dict(session.execute(select(Lab.id, Lab.state).where(Lab.id.in_(lab_ids))).all())


def lab(rt: Runtime, lab_id: int) -> Lab:
    with rt.session() as session:
        return session.get(Lab, lab_id)


def queued(rt: Runtime) -> list[str]:
    return Queue(QUEUE, connection=rt.redis).job_ids


class Statements:
    """Counts the SQL statements a block sends, to show a sweep works in bulk."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        self.sql: list[str] = []

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.sql.append(statement)

    def __enter__(self) -> "Statements":
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


# -- suspend idle ------------------------------------------------------------------------------------------
def test_a_kept_alive_lab_stays_and_an_idle_one_is_suspended_with_a_job(
    rt: Runtime, world: World, clock: Clock
) -> None:
    watched, idle = add_labs(rt, world, 2, "running")  # activity default: suspend after 120 s idle
    clock.advance(100)
    record_keepalive(rt.redis, watched)
    clock.advance(21)

    assert schedule.suspend_idle(rt) == 1

    assert states(rt, [watched, idle]) == {watched: "running", idle: "suspending"}
    jobs = queued(rt)
    assert len(jobs) == 1 and jobs[0].startswith(f"lab-{idle}-suspending-")
    assert lab(rt, watched).last_active_at == clock.now - timedelta(seconds=21)
    # Running the sweep again adds nothing: the idle lab has already moved on.
    assert schedule.suspend_idle(rt) == 0
    assert len(queued(rt)) == 1


def test_hundreds_of_idle_labs_are_suspended_by_one_sweep_in_bulk(
    rt: Runtime, world: World, clock: Clock, db_url: str
) -> None:
    labs = add_labs(rt, world, 300, "running")
    watched, idle = labs[::2], labs[1::2]
    clock.advance(60)
    for lab_id in watched:
        record_keepalive(rt.redis, lab_id)
    clock.advance(61)

    with Statements(db_url) as statements:
        assert schedule.suspend_idle(rt) == 150

    found = states(rt, labs)
    assert {found[i] for i in watched} == {"running"}
    assert {found[i] for i in idle} == {"suspending"}
    assert sorted(int(j.split("-")[1]) for j in queued(rt)) == idle
    # Bulk, not per lab: a few statements in all, and one UPDATE moves all 150.
    assert len(statements.sql) <= 10, statements.sql
    moves = [s for s in statements.sql if s.lstrip().upper().startswith("UPDATE LABS SET STATE")]
    assert len(moves) == 1, statements.sql


def test_a_learner_who_left_is_suspended_after_the_leave_grace(rt: Runtime, world: World, clock: Clock) -> None:
    left, stayed = add_labs(rt, world, 2, "running")
    clock.advance(10)
    record_leave(rt.redis, left)
    record_keepalive(rt.redis, stayed)

    clock.advance(rt.settings.leave_grace - 5)
    assert schedule.suspend_idle(rt) == 0
    clock.advance(6)
    assert schedule.suspend_idle(rt) == 1

    assert states(rt, [left, stayed]) == {left: "suspending", stayed: "running"}


def test_each_activity_has_its_own_idle_threshold(rt: Runtime, world: World, clock: Clock) -> None:
    quick = add_activity(rt, world, "quick", idle_suspend_after=60)
    patient = add_activity(rt, world, "patient", idle_suspend_after=600)
    (quick_lab,) = add_labs(rt, world, 1, "running", quick)
    (patient_lab,) = add_labs(rt, world, 1, "running", patient)
    record_keepalive(rt.redis, quick_lab)
    record_keepalive(rt.redis, patient_lab)

    clock.advance(61)
    assert schedule.suspend_idle(rt) == 1
    assert states(rt, [quick_lab, patient_lab]) == {quick_lab: "suspending", patient_lab: "running"}
    clock.advance(500)
    assert schedule.suspend_idle(rt) == 0
    clock.advance(40)
    assert schedule.suspend_idle(rt) == 1
    assert states(rt, [patient_lab]) == {patient_lab: "suspending"}


# -- reap ----------------------------------------------------------------------------------------------------
def test_reap_deletes_long_unused_and_old_failed_labs_only(rt: Runtime, world: World, clock: Clock) -> None:
    short = add_activity(rt, world, "short-lived", reap_after_days=2)
    now = clock.now
    (stale_running,) = add_labs(rt, world, 1, "running", last_active_at=now - timedelta(days=15))
    (recent_suspended,) = add_labs(rt, world, 1, "suspended", last_active_at=now - timedelta(days=10))
    (short_suspended,) = add_labs(rt, world, 1, "suspended", short, last_active_at=now - timedelta(days=3))
    (short_recent,) = add_labs(rt, world, 1, "running", short, last_active_at=now - timedelta(hours=20))
    (old_failed,) = add_labs(rt, world, 1, "failed", state_changed_at=now - timedelta(days=2))
    (new_failed,) = add_labs(rt, world, 1, "failed", state_changed_at=now - timedelta(hours=2))

    assert schedule.reap(rt) == 3

    assert states(rt, [stale_running, recent_suspended, short_suspended, short_recent, old_failed, new_failed]) == {
        stale_running: "deleting",
        recent_suspended: "suspended",
        short_suspended: "deleting",
        short_recent: "running",
        old_failed: "deleting",
        new_failed: "failed",
    }
    assert sorted(int(j.split("-")[1]) for j in queued(rt)) == sorted([stale_running, short_suspended, old_failed])


# -- expire stuck ------------------------------------------------------------------------------------------
def test_a_stuck_lab_is_retried_then_failed(rt: Runtime, world: World, clock: Clock) -> None:
    deadline = clock.now + timedelta(seconds=rt.settings.provisioning_deadline)
    (stuck,) = add_labs(rt, world, 1, "provisioning", deadline=deadline)
    (on_time,) = add_labs(rt, world, 1, "provisioning", deadline=deadline + timedelta(hours=1))
    assert rt.settings.max_recoveries == 2

    clock.advance(rt.settings.provisioning_deadline - 1)
    assert schedule.expire_stuck(rt) == 0
    for attempt in (1, 2):
        clock.advance(rt.settings.provisioning_deadline + 2)
        assert schedule.expire_stuck(rt) == 1
        retried = lab(rt, stuck)
        assert (retried.state, retried.recoveries) == ("provisioning", attempt)
        assert retried.deadline > clock.now
        assert queued(rt)[-1].startswith(f"lab-{stuck}-provisioning-") and queued(rt)[-1].endswith(f"-{attempt}")
    clock.advance(rt.settings.provisioning_deadline + 2)
    assert schedule.expire_stuck(rt) == 1

    failed = lab(rt, stuck)
    assert failed.state == "failed"
    assert failed.message == "The lab took too long while provisioning. Reset the lab to try again."
    assert len(set(queued(rt))) == 2
    with rt.session() as session:
        reasons = session.scalars(select(LabEvent.reason).where(LabEvent.lab_id == stuck).order_by(LabEvent.id)).all()
    assert reasons == ["deadline passed; retrying", "deadline passed; retrying", "deadline passed while provisioning"]
    untouched = lab(rt, on_time)
    assert (untouched.state, untouched.recoveries) == ("provisioning", 0)


# -- reconcile --------------------------------------------------------------------------------------------
def test_reconcile_deletes_unclaimed_objects_after_the_grace_only(rt: Runtime, world: World, clock: Clock) -> None:
    connector = rt.connector(lab_backend(rt, world))
    (running,) = add_labs(rt, world, 1, "running")
    (creating,) = add_labs(rt, world, 1, "provisioning")
    (failed,) = add_labs(rt, world, 1, "failed")
    handles = {lab_id: connector.provision(LabSpec(lab_id, "img", "someone")) for lab_id in (running, creating, failed)}
    set_handle(rt, running, handles[running])
    set_handle(rt, failed, handles[failed])
    stray = 10_000 + running  # no lab row at all
    connector.provision(LabSpec(stray, "img", "nobody"))
    present = lambda: {m.lab_id for m in connector.list_managed()}  # noqa: E731

    assert schedule.reconcile_backend(rt, world.backend_id) == {"orphans_deleted": 0, "vanished": 0}
    assert present() == {running, creating, failed, stray}  # first sighting: only noted
    clock.advance(rt.settings.orphan_grace - 1)
    assert schedule.reconcile_backend(rt, world.backend_id)["orphans_deleted"] == 0
    clock.advance(1)
    assert schedule.reconcile_backend(rt, world.backend_id)["orphans_deleted"] == 2

    assert present() == {running, creating}
    assert states(rt, [running, creating, failed]) == {running: "running", creating: "provisioning", failed: "failed"}


def test_reconcile_fails_a_lab_whose_object_vanished(rt: Runtime, world: World, clock: Clock) -> None:
    connector = rt.connector(lab_backend(rt, world))
    (kept, vanished) = add_labs(rt, world, 2, "running")
    (asleep,) = add_labs(rt, world, 1, "suspended")
    for lab_id in (kept, vanished, asleep):
        set_handle(rt, lab_id, connector.provision(LabSpec(lab_id, "img", "someone")))
    connector.delete({"key": LabSpec(vanished, "img", "someone").name})  # deleted behind LabDesk's back

    assert schedule.reconcile_backend(rt, world.backend_id) == {"orphans_deleted": 0, "vanished": 1}

    assert states(rt, [kept, vanished, asleep]) == {kept: "running", vanished: "failed", asleep: "suspended"}
    assert lab(rt, vanished).message == "This lab's machine no longer exists. Launch again to get a fresh lab."


def lab_backend(rt: Runtime, world: World) -> Backend:
    with rt.session() as session:
        return session.get(Backend, world.backend_id)


def set_handle(rt: Runtime, lab_id: int, handle: dict[str, Any]) -> None:
    with rt.session() as session:
        session.get(Lab, lab_id).handle = handle
        session.commit()
