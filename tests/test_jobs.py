"""Labs driven through real `labdesk worker` processes: polling with rq `Retry`, double clicks, suspend and
resume, transient / permanent / capacity errors, stale jobs and a relaunch after a failure.

Runs on PostgreSQL (production's concurrency), plus one smoke test on SQLite (the embedded default).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from broker import jobs, migrate, schedule, services
from broker.clock import set_clock, utcnow
from broker.config import load_settings
from broker.lifecycle import LabState
from broker.models import Backend, Lab, LabEvent
from broker.runtime import Runtime
from tests.support import waiting
from tests.support.waiting import lab_row as lab
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner

S = LabState


def wait_state(rt: Runtime, lab_id: int, state: LabState, timeout: float = 20) -> Lab:
    return waiting.wait_state(rt, lab_id, state, timeout)


QUEUE = "labdesk-backend-fake"


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """PostgreSQL unless a test asks for SQLite with `@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)`."""
    if getattr(request, "param", "postgresql") == "sqlite":
        url = f"sqlite:///{tmp_path / 'labdesk.sqlite3'}"
        migrate.upgrade(load_settings(environ={}, overrides={"database_url": url, "data_dir": str(tmp_path)}))
        return url
    return request.getfixturevalue("pg_only")


# -- helpers ---------------------------------------------------------------------------------------------
def script_backend(rt: Runtime, world: World, **config: Any) -> None:
    """Change how the fake backend behaves (workers read the backend row on every job)."""
    with rt.session() as session:
        backend = session.get(Backend, world.backend_id)
        backend.config = {**backend.config, **config}
        session.commit()


def history(rt: Runtime, lab_id: int) -> list[tuple[str, str]]:
    with rt.session() as session:
        rows = session.scalars(select(LabEvent).where(LabEvent.lab_id == lab_id).order_by(LabEvent.id)).all()
        return [(e.from_state, e.to_state) for e in rows]


def worker_log(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log")))


def fake_objects(fake_dir: Path) -> set[str]:
    return {p.stem for p in fake_dir.glob("labdesk-lab-*.json")}


# -- the happy path, through a real worker ---------------------------------------------------------------
@pytest.mark.postgres
def test_a_launch_polls_the_backend_with_retry_until_the_lab_runs(
    rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path, tmp_path: Path
) -> None:
    script_backend(rt, world, provision_delay=2.5)
    workers.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    job_id = jobs.job_request(launched, QUEUE).job_id
    assert launched.state == "requested"

    provisioning = wait_state(rt, launched.id, S.PROVISIONING)
    assert provisioning.deadline is not None  # the deadline sweep can act on it
    seen_progress = wait_until(lambda: lab(rt, launched.id).progress == 50, what="progress reported while pending")
    assert seen_progress
    running = wait_state(rt, launched.id, S.RUNNING)

    assert (running.progress, running.message) == (100, "")
    assert running.idle_deadline is not None and running.idle_deadline > utcnow()
    assert history(rt, launched.id) == [("", "requested"), ("requested", "provisioning"), ("provisioning", "running")]
    assert fake_objects(fake_dir) == {f"labdesk-lab-{launched.id}"}
    # One job polled the backend several times: the worker ran the same job id again and again (rq Retry),
    # rather than one job sleeping in a loop.
    runs = worker_log(tmp_path).count(f"advance_lab({launched.id}, 'requested', 0) ({job_id})")
    assert runs >= 2, worker_log(tmp_path)


@pytest.mark.postgres
def test_a_double_clicked_launch_makes_one_lab_and_one_job(rt: Runtime, world: World) -> None:
    learners = [world.user_id] + [add_learner(rt, f"clicker-{n}") for n in range(7)]
    for user_id in learners:
        start = threading.Barrier(2)
        results: list[int] = []
        errors: list[BaseException] = []

        def click(uid: int = user_id, gate: threading.Barrier = start) -> None:
            try:
                gate.wait(timeout=10)
                results.append(services.launch(rt, uid, world.activity_id, "learner").id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=click) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert len(results) == 2 and results[0] == results[1]

    with rt.session() as session:
        labs = session.scalars(select(Lab)).all()
    assert sorted(l.user_id for l in labs) == sorted(learners)
    queue = Queue(QUEUE, connection=rt.redis)
    assert queue.count == len(learners)
    assert sorted(queue.job_ids) == sorted(jobs.job_request(l, QUEUE).job_id for l in labs)


@pytest.mark.postgres
def test_suspend_then_relaunch_resumes_the_same_lab(rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path) -> None:
    workers.start()
    first = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    wait_state(rt, first.id, S.RUNNING)

    services.request_state(rt, first.id, S.SUSPENDING, "admin", "end of session")
    wait_state(rt, first.id, S.SUSPENDED)
    again = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    assert again.id == first.id
    assert again.state == "resuming"
    resumed = wait_state(rt, first.id, S.RUNNING)

    assert resumed.id == first.id
    assert [to for _, to in history(rt, first.id)] == [
        "requested", "provisioning", "running", "suspending", "suspended", "resuming", "running"]
    assert fake_objects(fake_dir) == {f"labdesk-lab-{first.id}"}
    record = json.loads((fake_dir / f"labdesk-lab-{first.id}.json").read_text())
    assert record["after_resume"] == 1  # the connector's after-resume step ran once, for the one resume


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.slow
def test_a_transient_error_is_retried_with_back_off_and_the_lab_runs(
    rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path
) -> None:
    script_backend(rt, world, fail={"provision": "transient"}, fail_times=2)
    workers.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")

    backing_off = wait_until(lambda: lab(rt, launched.id).message, what="a message while backing off")
    assert backing_off == "The lab backend failed (transient)."
    running = wait_state(rt, launched.id, S.RUNNING, timeout=30)

    assert running.message == ""
    with rt.session() as session:
        events = session.scalars(select(LabEvent).where(LabEvent.lab_id == launched.id).order_by(LabEvent.id)).all()
    picked_up, done = events[1], events[2]
    assert (picked_up.to_state, done.to_state) == ("provisioning", "running")
    # Two failures, then success: waits of 2 s and 4 s (doubling), not an immediate hammering.
    assert (done.at - picked_up.at).total_seconds() >= 5.5
    assert fake_objects(fake_dir) == {f"labdesk-lab-{launched.id}"}


@pytest.mark.postgres
def test_a_permanent_error_fails_the_lab_with_a_readable_message(
    rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path
) -> None:
    script_backend(rt, world, fail={"provision": "permanent"})
    workers.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")

    failed = wait_state(rt, launched.id, S.FAILED)

    assert failed.message == "The lab backend failed (permanent)."
    assert history(rt, launched.id)[-1] == ("provisioning", "failed")
    assert fake_objects(fake_dir) == set()


@pytest.mark.postgres
def test_a_full_backend_keeps_retrying_until_the_deadline_sweep_fails_the_lab(
    rt: Runtime, world: World, workers: WorkerPool
) -> None:
    script_backend(rt, world, capacity=1)
    workers.start()
    first = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    wait_state(rt, first.id, S.RUNNING)
    other = add_learner(rt, "learner-2")
    waiting = services.launch(rt, other, world.activity_id, "learner-2")

    busy = wait_until(lambda: lab(rt, waiting.id).message, what="the capacity message")
    assert "All lab machines are busy" in busy
    assert lab(rt, waiting.id).state == "provisioning"
    job_id = jobs.job_request(waiting, QUEUE).job_id
    scheduled = ScheduledJobRegistry(QUEUE, connection=rt.redis)
    wait_until(lambda: job_id in scheduled.get_job_ids(), what="the job scheduled to try again")

    rt.settings = dataclasses.replace(rt.settings, max_recoveries=0)
    later = utcnow() + timedelta(seconds=rt.settings.provisioning_deadline + 1)
    set_clock(lambda: later)
    try:
        assert schedule.expire_stuck(rt) == 1
    finally:
        set_clock(None)
    failed = lab(rt, waiting.id)
    assert failed.state == "failed"
    assert "took too long while provisioning" in failed.message
    assert lab(rt, first.id).state == "running"


# -- stale jobs and relaunching ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_stale_job_does_nothing(rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path) -> None:
    workers.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    running = wait_state(rt, launched.id, S.RUNNING)
    before = history(rt, launched.id)
    # Any backend call now would fail the lab, so a stale job that touched the backend would show.
    script_backend(rt, world, fail={op: "permanent" for op in ("provision", "observe", "suspend", "resume", "delete")})

    for state in ("requested", "provisioning", "suspending", "resuming", "deleting"):
        stale = jobs.JobRequest(QUEUE, f"stale-{launched.id}-{state}", jobs.advance_lab, (launched.id, state))
        assert rt.dispatcher.enqueue(stale)
    queue = Queue(QUEUE, connection=rt.redis)
    wait_until(lambda: queue.count == 0 and queue.started_job_registry.count == 0, what="the stale jobs to run")

    after = lab(rt, launched.id)
    assert (after.state, after.message, after.handle) == ("running", "", running.handle)
    assert history(rt, launched.id) == before
    assert fake_objects(fake_dir) == {f"labdesk-lab-{launched.id}"}


@pytest.mark.postgres
def test_relaunch_after_a_failure_starts_a_new_lab_and_deletes_the_old_object(
    rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path
) -> None:
    # The object gets created, then the first look at it fails for good: a failed lab with a leftover.
    script_backend(rt, world, fail={"observe": "permanent"}, fail_times=1)
    workers.start()
    broken = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    wait_state(rt, broken.id, S.FAILED)
    assert fake_objects(fake_dir) == {f"labdesk-lab-{broken.id}"}

    fresh = services.launch(rt, world.user_id, world.activity_id, "learner-1")

    assert fresh.id != broken.id
    wait_state(rt, fresh.id, S.RUNNING)
    wait_state(rt, broken.id, S.DELETED)
    assert fake_objects(fake_dir) == {f"labdesk-lab-{fresh.id}"}
    assert ("failed", "deleting") in history(rt, broken.id)


# -- the embedded default ----------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_launch_runs_through_a_worker_on_sqlite(rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path) -> None:
    script_backend(rt, world, provision_delay=1)
    workers.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")

    running = wait_state(rt, launched.id, S.RUNNING)

    assert [to for _, to in history(rt, running.id)] == ["requested", "provisioning", "running"]
    assert fake_objects(fake_dir) == {f"labdesk-lab-{launched.id}"}


def test_two_first_sign_ins_with_one_identity_make_one_user(rt: Runtime) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from broker.models import User

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: services.user_for(rt, "dev", "twin", "Twin"), range(8)))
    assert len(ids) == 1
    with rt.session() as session:
        assert len(session.scalars(select(User).where(User.subject == "twin")).all()) == 1
