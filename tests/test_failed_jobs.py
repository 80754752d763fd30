"""broker.failed_jobs with real rq: a lab job that raised something unexpected is listed with its lab and
the exception's last line, a retry requeues it (audited) and the lab then runs; a job that names no lab
is listed without one; labs in state `failed` come with the reason their event recorded. SQLite and
PostgreSQL; the jobs run in an in-process SimpleWorker.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from broker import failed_jobs, services
from broker.clock import utcnow
from broker.dispatch import DEFAULT_QUEUE, JobRequest
from broker.models import AuditEvent, Backend
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import World, add_learner


def explode() -> None:
    """A job of no lab that fails (rq imports it by its dotted path)."""
    raise ValueError("the report template is missing\nsecond line of the message")


def test_a_failed_lab_job_is_listed_with_its_reason_and_a_retry_runs_it(
    rt: Runtime, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_provision(self: FakeConnector, spec: object) -> None:
        raise RuntimeError("disk full on the image store")

    monkeypatch.setattr(FakeConnector, "provision", broken_provision)
    lab_id = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "provisioning"  # stuck until the deadline sweep, or a retry

    rt.dispatcher.enqueue(JobRequest(DEFAULT_QUEUE, "report-7", "tests.test_failed_jobs.explode"))
    run_queued_jobs(rt)

    found = {job.job_id: job for job in failed_jobs.failed_jobs(rt)}
    lab_job = next(job for job in found.values() if job.lab_id == lab_id)
    assert lab_job.job_id.startswith(f"lab-{lab_id}-requested-")
    assert lab_job.queue == "labdesk-backend-fake"
    assert lab_job.function == "broker.jobs.advance_lab"
    assert lab_job.args[:2] == (lab_id, "requested")
    assert lab_job.reason == "RuntimeError: disk full on the image store"
    assert lab_job.enqueued_at is not None and lab_job.ended_at is not None
    assert lab_job.enqueued_at.tzinfo is None  # naive UTC, like every LabDesk time
    assert timedelta(0) <= utcnow() - lab_job.ended_at < timedelta(minutes=2)
    assert lab_job.enqueued_at <= lab_job.ended_at
    report = found["report-7"]
    assert (report.lab_id, report.queue, report.function) == (None, DEFAULT_QUEUE, "tests.test_failed_jobs.explode")
    assert report.reason == "second line of the message"  # the traceback's last line, as written

    monkeypatch.undo()  # the image store has room again
    failed_jobs.retry(rt, lab_job.job_id, "admin:root", address="192.0.2.9")
    assert lab_job.job_id not in {job.job_id for job in failed_jobs.failed_jobs(rt)}
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    with rt.session() as session:
        event = session.scalars(select(AuditEvent)).one()
    assert (event.actor, event.action, event.lab_id, event.target, event.address) == (
        "admin:root", "job.retry", lab_id, f"job:{lab_job.job_id}", "192.0.2.9")
    assert "RuntimeError: disk full" in event.detail

    with pytest.raises(failed_jobs.JobNotFound):
        failed_jobs.retry(rt, lab_job.job_id, "admin:root")  # retried already


def test_failed_labs_come_with_their_reason(rt: Runtime, world: World) -> None:
    with rt.session() as session:
        backend = session.get(Backend, world.backend_id)
        backend.config = {**backend.config, "fail": {"provision": "permanent"}}
        session.commit()
    other = add_learner(rt, "learner-2")
    first = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    second = services.launch(rt, other, world.activity_id, "learner-2").id
    run_queued_jobs(rt)

    with rt.session() as session:
        listed = failed_jobs.failed_labs(session)
    assert [lab.lab_id for lab in listed] == [second, first]
    assert listed[0].reason == "scripted permanent failure in provision"
    assert listed[0].message == "The lab backend failed (permanent)."
    assert (listed[0].learner, listed[0].backend, listed[0].course, listed[0].activity) == (
        "learner-2", "fake", "Test course", "Test lab")
    assert failed_jobs.failed_jobs(rt) == []  # a connector's error is handled, not an rq failure


def test_a_job_run_for_a_labs_row_is_listed_with_that_lab(rt: Runtime, world: World) -> None:
    from broker.models import CheckAttempt

    lab_id = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    with rt.session() as session:
        attempt = CheckAttempt(lab_id=lab_id, user_id=world.user_id, activity_id=world.activity_id, job_id="check-41")
        session.add(attempt)
        session.commit()
    rt.dispatcher.enqueue(JobRequest("labdesk-backend-fake", "check-41", "tests.test_failed_jobs.explode"))
    run_queued_jobs(rt)
    [job] = failed_jobs.failed_jobs(rt)
    assert (job.job_id, job.lab_id) == ("check-41", lab_id)
