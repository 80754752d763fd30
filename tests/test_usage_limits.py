"""Weekly hour limits (broker.usage_limits) as a learner meets them: the lab page's hours left, the sweep
suspending a lab that went over (work kept, the reason on the lab page), Resume refused with the day it
opens again, and the lab opening again on Monday 00:00 UTC. Hours are counted from the lab events: only
running time, across the week boundary, across a reset; instructors have no limit.

The real app over HTTP, the real services and jobs (run in-process from the real rq queues by
tests/support/inline.py) on the fake backend, both databases, and a clock the tests move.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator

import pytest
from rq import Queue
from sqlalchemy import select

from broker import class_labs, schedule, services, usage_limits
from broker.clock import set_clock
from broker.dispatch import DEFAULT_QUEUE
from broker.lifecycle import LabState
from broker.models import Activity, Lab, LabEvent, Membership, User
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector
from tests.support.http import Learner, LiveServer
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import World
from tests.web.conftest import learner, server  # noqa: F401  (fixtures)

S = LabState
THURSDAY = datetime(2026, 12, 3, 10, 0)  # the week of Monday 30 November 2026
REFUSAL = "You have used your 2 hours of this lab for this week. It opens again on Monday 7 December at 00:00 UTC."


@dataclass
class Clock:
    """The broker's "now", frozen where the test puts it (the web threads and the in-process jobs read it)."""

    now: datetime

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    moved = Clock(THURSDAY)
    set_clock(lambda: moved.now)
    yield moved
    set_clock(None)


def limit(rt: Runtime, world: World, hours: float | None) -> None:
    with rt.session() as session:
        session.get(Activity, world.activity_id).weekly_hours_limit = hours
        session.commit()


def used(rt: Runtime, user_id: int, activity_id: int) -> float:
    with rt.session() as session:
        found = usage_limits.weekly_usage(session, user_id, session.get(Activity, activity_id))
        assert found is not None
        return found.used


def running_lab(rt: Runtime, person: Learner, activity_id: int) -> int:
    lab_id = person.lab_id(person.launch(activity_id))
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    return lab_id


def sweep_as_the_scheduler_does(rt: Runtime) -> None:
    """The registered periodic job on the default queue, then the suspend jobs it queued."""
    Queue(DEFAULT_QUEUE, connection=rt.redis).enqueue(schedule.usage_limits_job)
    run_queued_jobs(rt)


def user_of(rt: Runtime, name: str) -> int:
    with rt.session() as session:
        return session.scalar(select(User.id).where(User.subject == name))


def test_a_learner_sees_the_hours_left_is_suspended_at_the_limit_and_gets_the_lab_back_on_monday(
    rt: Runtime, world: World, server: LiveServer, learner: Callable[[str], Learner], clock: Clock  # noqa: F811
) -> None:
    limit(rt, world, 2)
    ada = learner("ada")
    lab_id = running_lab(rt, ada, world.activity_id)
    page = ada.get(f"/labs/{lab_id}").text
    assert ("This week you have 2 hours left of this lab&#39;s 2 hours; the count starts again on Monday 7 December "
            "at 00:00 UTC.") in page

    clock.advance(hours=1, minutes=25)
    status = ada.get(f"/api/labs/{lab_id}").json()["weekly_limit"]
    assert status["text"].startswith("This week you have 35 minutes left of this lab's 2 hours;")
    assert (status["remaining_hours"], status["exhausted"], status["reopens_at"]) == (pytest.approx(35 / 60, abs=1e-3), False, "2026-12-07T00:00:00Z")

    sweep_as_the_scheduler_does(rt)
    assert lab_state(rt, lab_id) == "running", "under the limit: the sweep leaves it alone"

    clock.advance(minutes=36)
    sweep_as_the_scheduler_does(rt)
    assert lab_state(rt, lab_id) == "suspended", "over the limit: suspended, not deleted"
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        assert FakeConnector("fake", lab.backend.config).observe(lab.handle).state.value == "suspended", "the work is kept"
        reasons = session.scalars(select(LabEvent.reason).where(LabEvent.lab_id == lab_id, LabEvent.to_state == "suspending")).all()
    assert reasons == ["weekly hour limit reached"]
    status = ada.get(f"/api/labs/{lab_id}").json()["weekly_limit"]
    assert status["exhausted"] and status["text"] == REFUSAL, "the lab page says why"
    assert REFUSAL in ada.get(f"/labs/{lab_id}").text

    refused = ada.launch(world.activity_id)  # the lab page's "Resume my lab"
    assert refused.status_code == 403
    assert "This lab cannot open now" in refused.text and REFUSAL in refused.text
    assert lab_state(rt, lab_id) == "suspended"

    clock.now = datetime(2026, 12, 7, 0, 0, 1)  # a new week
    assert ada.lab_id(ada.launch(world.activity_id)) == lab_id, "the same lab, resumed"
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    assert "This week you have 2 hours left" in ada.get(f"/api/labs/{lab_id}").json()["weekly_limit"]["text"]


def test_only_running_time_counts_from_monday_across_every_lab_of_the_activity(
    rt: Runtime, world: World, server: LiveServer, learner: Callable[[str], Learner], clock: Clock  # noqa: F811
) -> None:
    limit(rt, world, 3)
    clock.now = datetime(2026, 12, 6, 23, 0)  # Sunday 23:00: an hour before the week turns
    ada = learner("ada")
    uid = user_of(rt, "ada")
    lab_id = running_lab(rt, ada, world.activity_id)
    clock.advance(hours=2)  # Monday 01:00
    assert used(rt, uid, world.activity_id) == pytest.approx(1.0), "Sunday's hour belongs to last week"

    services.request_state(rt, lab_id, S.SUSPENDING, "test", "learner left")
    run_queued_jobs(rt)
    clock.advance(hours=5)
    assert used(rt, uid, world.activity_id) == pytest.approx(1.0), "suspended time does not count"

    ada.launch(world.activity_id)
    run_queued_jobs(rt)
    clock.advance(minutes=30)
    assert used(rt, uid, world.activity_id) == pytest.approx(1.5)

    services.reset(rt, uid, lab_id)  # a fresh lab does not start the count again
    run_queued_jobs(rt)
    clock.advance(minutes=30)
    assert used(rt, uid, world.activity_id) == pytest.approx(2.0)

    bob = learner("bob")
    running_lab(rt, bob, world.activity_id)
    clock.advance(minutes=15)
    assert used(rt, user_of(rt, "bob"), world.activity_id) == pytest.approx(0.25), "each learner has their own hours"
    assert used(rt, uid, world.activity_id) == pytest.approx(2.25)


def test_a_learner_over_the_limit_cannot_start_a_fresh_lab_by_resetting(
    rt: Runtime, world: World, server: LiveServer, learner: Callable[[str], Learner], clock: Clock  # noqa: F811
) -> None:
    limit(rt, world, 2)
    ada = learner("ada")
    lab_id = running_lab(rt, ada, world.activity_id)
    clock.advance(hours=2)
    refused = ada.post(f"/api/labs/{lab_id}/reset", headers={"X-CSRF-Token": ada.csrf_token()})  # "Reset lab…"
    assert refused.status_code == 403 and refused.json() == {"error": "This lab cannot open now", "advice": REFUSAL}
    assert lab_state(rt, lab_id) == "running", "refused before the old lab goes: nothing is lost"

    with pytest.raises(services.LaunchRefused, match=f"^{REFUSAL}$"):  # the instructor's Reset on the course dashboard
        class_labs.reset(rt, lab_id, "instructor:1")
    assert lab_state(rt, lab_id) == "running"


def test_instructors_have_no_limit_and_activities_without_one_are_left_alone(
    rt: Runtime, world: World, server: LiveServer, learner: Callable[[str], Learner], clock: Clock  # noqa: F811
) -> None:
    limit(rt, world, 1)
    teacher = learner("teacher")
    with rt.session() as session:
        session.add(Membership(course_id=world.course_id, user_id=user_of(rt, "teacher"), role="instructor"))
        session.commit()
    teacher_lab = running_lab(rt, teacher, world.activity_id)
    ada = learner("ada")
    ada_lab = running_lab(rt, ada, world.activity_id)
    clock.advance(hours=3)

    assert teacher.get(f"/api/labs/{teacher_lab}").json()["weekly_limit"] is None
    assert "This week you have" not in teacher.get(f"/labs/{teacher_lab}").text
    sweep_as_the_scheduler_does(rt)
    assert (lab_state(rt, teacher_lab), lab_state(rt, ada_lab)) == ("running", "suspended")

    services.request_state(rt, teacher_lab, S.SUSPENDING, "test", "left")
    run_queued_jobs(rt)
    assert teacher.lab_id(teacher.launch(world.activity_id)) == teacher_lab, "an instructor resumes whatever the hours"

    limit(rt, world, None)
    assert ada.lab_id(ada.launch(world.activity_id)) == ada_lab, "no limit any more: the learner resumes"
    run_queued_jobs(rt)
    clock.advance(hours=10)
    sweep_as_the_scheduler_does(rt)
    assert lab_state(rt, ada_lab) == "running"
    assert ada.get(f"/api/labs/{ada_lab}").json()["weekly_limit"] is None


def test_the_words() -> None:
    assert usage_limits.week_start(datetime(2026, 12, 7, 0, 0)) == datetime(2026, 12, 7)
    assert usage_limits.week_start(datetime(2026, 12, 6, 23, 59, 59)) == datetime(2026, 11, 30)
    assert [usage_limits.hours_text(h) for h in (1, 1.5, 5)] == ["1 hour", "1.5 hours", "5 hours"]
    assert [usage_limits.duration_text(h) for h in (0, 1 / 60, 1, 4 + 35 / 60, 2 - 1 / 3600, 2 - 40 / 3600)] == [
        "0 minutes", "1 minute", "1 hour", "4 hours 35 minutes", "2 hours", "1 hour 59 minutes"]
