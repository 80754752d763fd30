"""/admin/jobs over real HTTP with real rq (an in-process SimpleWorker runs the queues): a failed job is
listed with its reason and a Retry button that puts it back on its queue (audited, shown once), failed
labs come with their reason, and only an admin's CSRF-checked POST retries anything. With Redis
unreachable (a runtime whose Redis URL is a closed loopback port) the page still lists the failed labs and
says why the job list is missing, and Retry says why nothing was retried."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from rq import Queue
from sqlalchemy import select

from broker import failed_jobs, services
from broker.dispatch import DEFAULT_QUEUE, JobRequest
from broker.models import AuditEvent, Backend
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.support.redis_down import serve_without_redis
from tests.support.inline import run_queued_jobs
from tests.support.world import World
from tests.support.admin_browser import Browser, signed_in_root

JOB = "report-7"
FIXED = "LABDESK_TEST_REPORT_STORE"  # the job fails until this names a directory to write in


def write_report() -> None:
    """A job of no lab that fails until its store is configured (rq imports it by its dotted path)."""
    store = os.environ.get(FIXED)
    if not store:
        raise RuntimeError("the report store is unreachable")
    Path(store, "report.txt").write_text("done")


@pytest.fixture
def admin_browser(rt: Runtime, server: LiveServer) -> Browser:
    return signed_in_root(rt, server.url)


@pytest.fixture
def failed_job(rt: Runtime, world: World, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(FIXED, raising=False)
    rt.dispatcher.enqueue(JobRequest(DEFAULT_QUEUE, JOB, "tests.web.test_admin_jobs.write_report"))
    run_queued_jobs(rt)
    assert [j.job_id for j in failed_jobs.failed_jobs(rt)] == [JOB]
    return JOB


def notice(html: str) -> str:
    found = re.search(r'<p class="notice" role="status">(.*?)</p>', html, re.S)
    assert found, "no outcome shown"
    return found.group(1)


def retry(browser: Browser, job_id: str) -> requests.Response:
    return browser.post("/admin/jobs/retry", data={"csrf_token": browser.token("/admin/jobs"), "job_id": job_id})


def test_a_failed_job_is_listed_with_its_reason_and_retry_requeues_it(
    rt: Runtime, failed_job: str, admin_browser: Browser, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = admin_browser.get("/admin/jobs").text
    row = re.search(rf"<tr><td><code>{JOB}</code></td>(.*?)</tr>", page, re.S)
    assert row, page
    assert "<td>labdesk-default</td>" in row.group(1) and "<td>RuntimeError: the report store is unreachable</td>" in row.group(1)
    assert f'aria-label="Retry {JOB}">Retry</button>' in row.group(1)

    done = retry(admin_browser, JOB)
    assert done.url.endswith("/admin/jobs")
    assert notice(done.text) == f"Job {JOB} is back on labdesk-default; a worker will run it again."
    assert "No failed jobs." in done.text
    assert Queue(DEFAULT_QUEUE, connection=rt.redis).job_ids == [JOB], "the same job, queued again"
    monkeypatch.setenv(FIXED, str(tmp_path))  # the store is back; the in-process worker sees it
    run_queued_jobs(rt)
    assert (tmp_path / "report.txt").read_text() == "done"
    with rt.session() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "job.retry")).one()
    assert (event.actor, event.target, event.address) == ("admin:root", f"job:{JOB}", "127.0.0.1")

    again = retry(admin_browser, JOB)
    assert notice(again.text) == f"Not retried: no failed job &#39;{JOB}&#39; (retried already, or expired)."
    assert 'class="notice"' not in admin_browser.get("/admin/jobs").text, "the outcome is shown once"


def test_failed_labs_are_listed_with_their_reason(rt: Runtime, world: World, admin_browser: Browser) -> None:
    assert "No failed labs." in admin_browser.get("/admin/jobs").text
    with rt.session() as db:
        backend = db.get(Backend, world.backend_id)
        backend.config = {**backend.config, "fail": {"provision": "permanent"}}
        db.commit()
    lab_id = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    page = admin_browser.get("/admin/jobs").text
    section = page.split('id="failed-labs-heading"')[1]
    row = re.search(rf"<tr><td>{lab_id}</td>(.*?)</tr>", section, re.S)
    assert row, section
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[:4] == ["learner-1", "Test course", "Test lab", "fake"]
    assert cells[5:] == ["scripted permanent failure in provision", "The lab backend failed (permanent)."]
    assert "No failed jobs." in page, "a connector's error is handled, not an rq failure"


def test_only_an_admins_csrf_checked_post_retries(
    rt: Runtime, failed_job: str, server: LiveServer, admin_browser: Browser, learner: Callable[[str], Learner]
) -> None:
    page = Browser(server.url).get("/admin/jobs", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"] == "/admin/login?next=/admin/jobs"
    ada = learner("Ada")
    refused = ada.post("/admin/jobs/retry", data={"csrf_token": ada.csrf_token(), "job_id": JOB})
    assert refused.status_code == 403 and "Admins only" in refused.text
    forged = admin_browser.post("/admin/jobs/retry", data={"job_id": JOB})
    assert forged.status_code == 400 and "This form has expired" in forged.text
    assert [j.job_id for j in failed_jobs.failed_jobs(rt)] == [JOB], "still failed, not retried"
    assert Queue(DEFAULT_QUEUE, connection=rt.redis).job_ids == []


@pytest.fixture
def redis_down(rt: Runtime) -> Iterator[LiveServer]:
    """The same app, database and keys on a runtime whose Redis is a loopback port nobody listens on."""
    yield from serve_without_redis(rt)


def fail_a_lab(rt: Runtime, world: World) -> int:
    with rt.session() as db:
        backend = db.get(Backend, world.backend_id)
        backend.config = {**backend.config, "fail": {"provision": "permanent"}}
        db.commit()
    lab_id = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    return lab_id


def test_with_redis_down_the_page_shows_the_failed_labs_and_says_the_jobs_are_unavailable(
    rt: Runtime, world: World, failed_job: str, admin_browser: Browser, redis_down: LiveServer
) -> None:
    lab_id = fail_a_lab(rt, world)
    admin_browser.base_url = redis_down.url  # the same signed-in browser, on the server that cannot reach Redis
    page = admin_browser.get("/admin/jobs")
    assert page.status_code == 200, page.text
    alert = re.search(r'<p class="error" role="alert">(.*?)</p>', page.text, re.S)
    assert alert and alert.group(1).startswith("The job list is unavailable: Redis cannot be reached (")
    assert "none can be listed or retried until Redis is back" in " ".join(alert.group(1).split())
    assert JOB not in page.text and "No failed jobs." not in page.text, "no claim that nothing failed"
    section = page.text.split('id="failed-labs-heading"')[1]
    assert re.search(rf"<tr><td>{lab_id}</td><td>learner-1</td>", section), "the failed labs come from the database"

    refused = retry(admin_browser, JOB)
    assert refused.status_code == 200 and refused.url == redis_down.url + "/admin/jobs"
    said = re.findall(r'<p class="error" role="alert">(.*?)</p>', refused.text, re.S)
    assert said[0].startswith("Not retried: the job queue is unavailable because Redis cannot be reached (")
    assert said[0].endswith("). Try again once Redis is back.")
    assert [j.job_id for j in failed_jobs.failed_jobs(rt)] == [JOB], "still failed in the real Redis, not retried"
    with rt.session() as db:
        assert db.scalars(select(AuditEvent).where(AuditEvent.action == "job.retry")).all() == []
