"""broker.lab_search: the admin's lab list (each filter, pages and the total) and bulk actions, which go
through the services (compare-and-set, jobs on the real rq queues, run by an in-process SimpleWorker),
skip labs they do not apply to with a reason, and write one audit row per lab. SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterator

import pytest
from sqlalchemy import select

from broker import lab_search
from broker.clock import set_clock
from broker.errors import LabDeskError
from broker.models import Activity, AuditEvent, Backend, Course, Lab
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import World, add_learner

NOW = datetime(2026, 12, 7, 12, 0)


@pytest.fixture
def clock() -> Iterator[None]:
    set_clock(lambda: NOW)
    yield
    set_clock(None)


def add_lab(rt: Runtime, activity_id: int, backend_id: int, state: str, age: timedelta, learner: str) -> int:
    user_id = add_learner(rt, learner)
    with rt.session() as session:
        lab = Lab(user_id=user_id, activity_id=activity_id, backend_id=backend_id, state=state,
                  created_at=NOW - age, last_active_at=NOW - age / 2, state_changed_at=NOW - age / 2)
        session.add(lab)
        session.commit()
        return lab.id


def second_course(rt: Runtime, world: World) -> tuple[int, int, int]:
    """Another course whose activity runs on another backend: (course, activity, backend)."""
    with rt.session() as session:
        backend = Backend(name="other", kind="fake", config={})
        course = Course(issuer="test", context_id="course-2", title="Second course")
        session.add_all([backend, course])
        session.flush()
        image_id = session.get(Activity, world.activity_id).image_id
        activity = Activity(course_id=course.id, resource_link_id="l2", title="Other lab", image_id=image_id, backend_id=backend.id)
        session.add(activity)
        session.commit()
        return course.id, activity.id, backend.id


def test_filters_pages_and_total(rt: Runtime, world: World, clock: None) -> None:
    course2, activity2, backend2 = second_course(rt, world)
    old_running = add_lab(rt, world.activity_id, world.backend_id, "running", timedelta(days=3), "ann")
    new_suspended = add_lab(rt, world.activity_id, world.backend_id, "suspended", timedelta(hours=2), "bob")
    failed = add_lab(rt, world.activity_id, world.backend_id, "failed", timedelta(days=1), "cat")
    other_running = add_lab(rt, activity2, backend2, "running", timedelta(minutes=5), "dan")

    with rt.session() as session:
        def ids(**filters: object) -> list[int]:
            return [r.lab_id for r in lab_search.find_labs(session, **filters).rows]  # type: ignore[arg-type]

        assert ids() == [other_running, new_suspended, old_running]  # live labs, newest first
        assert ids(states=["failed"]) == [failed]
        assert ids(states=["running"]) == [other_running, old_running]
        assert ids(backend="other") == [other_running]
        assert ids(course=world.course_id) == [new_suspended, old_running]
        assert ids(course=course2, backend="fake") == []
        assert ids(older_than=timedelta(days=1)) == [old_running]
        assert ids(newer_than=timedelta(hours=3)) == [other_running, new_suspended]

        page = lab_search.find_labs(session, limit=2)
        assert [r.lab_id for r in page.rows] == [other_running, new_suspended] and page.total == 3
        page = lab_search.find_labs(session, limit=2, offset=2)
        assert [r.lab_id for r in page.rows] == [old_running] and page.total == 3
        assert lab_search.find_labs(session, limit=2, offset=10).total == 3  # past the end: still the total

        row = lab_search.find_labs(session, backend="other").rows[0]
    assert (row.learner, row.course, row.activity, row.backend, row.state) == ("dan", "Second course", "Other lab", "other", "running")
    assert row.age == timedelta(minutes=5) and row.last_active_at == NOW - timedelta(minutes=2, seconds=30)


def audit_rows(rt: Runtime) -> list[tuple[int | None, str, str, str, str]]:
    with rt.session() as session:
        return [(e.lab_id, e.actor, e.action, e.target, e.detail) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def running_lab(rt: Runtime, world: World, learner: str) -> int:
    from broker import services

    user_id = add_learner(rt, learner)
    lab_id = services.launch(rt, user_id, world.activity_id, learner).id
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    return lab_id


def test_bulk_actions_go_through_the_services_and_skip_what_does_not_apply(rt: Runtime, world: World) -> None:
    a, b = running_lab(rt, world, "ann"), running_lab(rt, world, "bob")
    failed = add_lab(rt, world.activity_id, world.backend_id, "failed", timedelta(hours=1), "cat")

    result = lab_search.bulk_action(rt, [a, b, failed, 999, a], "suspend", "admin:root", address="192.0.2.1")
    assert result.done == [a, b]
    assert result.skipped == {failed: "it is failed", 999: "no such lab"}
    assert lab_state(rt, a) == lab_state(rt, b) == "suspending"  # the move is made; the job does the rest
    run_queued_jobs(rt)
    assert lab_state(rt, a) == lab_state(rt, b) == "suspended"
    assert audit_rows(rt) == [
        (a, "admin:root", "lab.suspend", "", "done"),
        (b, "admin:root", "lab.suspend", "", "done"),
        (failed, "admin:root", "lab.suspend", "", "skipped: it is failed"),
        (None, "admin:root", "lab.suspend", "lab:999", "skipped: no such lab"),
    ]

    result = lab_search.bulk_action(rt, [a, b], "resume", "admin:root")
    run_queued_jobs(rt)
    assert result.done == [a, b] and lab_state(rt, a) == "running"

    result = lab_search.bulk_action(rt, [a, failed], "delete", "admin:root")
    run_queued_jobs(rt)
    assert result.done == [a, failed] and lab_state(rt, a) == lab_state(rt, failed) == "deleted"
    assert lab_state(rt, b) == "running"

    with pytest.raises(LabDeskError, match="unknown bulk action"):
        lab_search.bulk_action(rt, [b], "explode", "admin:root")  # type: ignore[arg-type]


def test_a_backend_that_cannot_suspend_is_skipped_not_failed(rt: Runtime, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    lab_id = running_lab(rt, world, "ann")
    monkeypatch.setattr(FakeConnector, "capabilities", frozenset())
    result = lab_search.bulk_action(rt, [lab_id], "suspend", "admin:root")
    assert result.skipped == {lab_id: "its backend (fake) cannot suspend labs"}
    assert lab_state(rt, lab_id) == "running"


def test_the_queue_being_down_skips_each_lab_with_the_reason(rt: Runtime, world: World) -> None:
    lab_id = running_lab(rt, world, "ann")
    from redis import Redis

    rt.redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    result = lab_search.bulk_action(rt, [lab_id], "suspend", "admin:root")
    assert "the job queue is unavailable" in result.skipped[lab_id]
    assert lab_state(rt, lab_id) == "running"  # nothing was written before the queue was found down
