"""An instructor bulk-suspends a class from the course dashboard, and schedules a class session whose
warm-up starts the learners' labs, in chromium.

Two learners launch the demo link from the LMS emulator and a real rq worker process brings their labs up
on the fake backend; the instructor launches too (the signed LTI launch, in the browser), follows the
activity view's link to the course dashboard, sees both labs running, presses "Suspend all", confirms,
and sees both labs suspended by the worker.

Screenshots are saved in the test's tmp_path: dashboard-running.png, suspend-all-confirm.png,
dashboard-suspended.png; class-session-scheduled.png, class-session-warmed.png.
"""

from __future__ import annotations

from pathlib import Path
from datetime import timedelta
from typing import TYPE_CHECKING, Iterator

import pytest

from rq import Queue
from sqlalchemy import select

from broker import schedule
from broker.clock import utcnow
from broker.dispatch import DEFAULT_QUEUE
from broker.lifecycle import LabState
from broker.models import Activity, Lab
from broker.runtime import Runtime
from lti.emulator import launches, store
from tests.support.browser import require_browser
from tests.support.http import LiveServer
from tests.support.lms_browser import Person, serve_with_emulator, settings  # noqa: F401  (fixtures: settings)
from tests.support.waiting import wait_state, wait_until
from tests.support.workers import WorkerPool
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORT = {"width": 1200, "height": 900}
LEARNERS = {"emu-learner-1": "Ada Lovelace", "emu-learner-2": "Alan Turing"}


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    """SQLite only: the embedded default, shared by the web threads and the worker process."""
    return sqlite_db_url


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
    require_browser()
    yield from serve_with_emulator(rt, port, tmp_path)


def running_labs(rt: Runtime) -> list[int]:
    """Each learner's lab, launched from the emulator and brought up by the worker."""
    labs = [int(Person(rt, sub).landed.url.rsplit("/", 1)[1]) for sub in LEARNERS]
    for lab_id in labs:
        wait_state(rt, lab_id, LabState.RUNNING, timeout=30)
    return labs


def state_of(page: "Page", name: str) -> str:
    return page.locator("tr", has=page.get_by_role("rowheader", name=name)).locator("td.state").inner_text()


def test_an_instructor_suspends_the_whole_class_after_the_session(
    rt: Runtime, lms: LiveServer, workers: WorkerPool, browser: "Browser", tmp_path: Path
) -> None:
    workers.start(1)
    labs = running_labs(rt)
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.on("pageerror", lambda error: pytest.fail(f"script error on {page.url}: {error}"))

    page.goto(launches.start(rt, "emu-instructor-1", document_target="window"))
    page.wait_for_url("**/teach/activities/*")
    page.get_by_role("link", name="Course dashboard").click()
    page.wait_for_url("**/teach/courses/*")
    assert page.get_by_role("heading", level=1).inner_text() == "Demo course"
    for name in LEARNERS.values():
        assert state_of(page, name) == "running"
    page.screenshot(path=str(tmp_path / "dashboard-running.png"), full_page=True)

    page.locator("summary", has_text="Suspend all").first.click()
    confirm = page.get_by_role("button", name="Yes, suspend the running labs")
    assert confirm.is_visible(), "pressing Suspend all asks first"
    assert all(state_of(page, name) == "running" for name in LEARNERS.values()), "nothing happens before the confirmation"
    page.screenshot(path=str(tmp_path / "suspend-all-confirm.png"), full_page=True)
    confirm.click()

    assert page.get_by_role("status").inner_text() == "2 suspended, 0 skipped (not running)."
    for lab_id in labs:
        wait_state(rt, lab_id, LabState.SUSPENDED, timeout=30)
    page.reload()
    for name in LEARNERS.values():
        assert state_of(page, name) == "suspended"
    page.screenshot(path=str(tmp_path / "dashboard-suspended.png"), full_page=True)


def test_an_instructor_schedules_a_class_session_and_sees_the_warmed_labs(
    rt: Runtime, lms: LiveServer, workers: WorkerPool, browser: "Browser", tmp_path: Path
) -> None:
    """Ada and Alan opened the demo lab before; the course's second link, "Networking lab", has no lab of
    anyone. The instructor schedules its class to start in 20 minutes with the labs started 30 minutes
    before, i.e. now, for a warm pool of 2; the warm-up job runs on the worker and starts both labs."""
    workers.start(1)
    for sub in LEARNERS:
        Person(rt, sub)
    link = store.add_link(rt, "demo-course", "Networking lab", custom={"lab": "local-desktop"})["id"]
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.on("pageerror", lambda error: pytest.fail(f"script error on {page.url}: {error}"))
    page.goto(launches.start(rt, "emu-instructor-1", link_id=link, document_target="window"))
    page.wait_for_url("**/teach/activities/*")
    page.get_by_role("link", name="Course dashboard").click()
    page.wait_for_url("**/teach/courses/*")
    with rt.session() as db:
        activity_id = db.scalar(select(Activity.id).where(Activity.title == "Networking lab"))

    panel = page.locator(f"#classes-{activity_id}")
    assert "No class session of Networking lab is scheduled." in panel.inner_text()
    starts = (utcnow() + timedelta(minutes=20)).replace(second=0, microsecond=0)
    panel.locator("summary", has_text="Schedule a class session").click()
    form = panel.get_by_role("form", name="Schedule a class session of Networking lab")
    form.get_by_label("Starts (UTC)").fill(starts.strftime("%Y-%m-%dT%H:%M"))
    form.get_by_label("Length (minutes)").fill("50")
    form.get_by_label("Start the labs this many minutes before").fill("30")
    form.get_by_label("Warm pool (labs started ahead)").fill("2")
    form.get_by_role("button", name="Schedule the session").click()
    page.wait_for_url("**done=scheduled**")
    assert page.get_by_role("status").inner_text().startswith(f"Class session of Networking lab scheduled for {starts:%Y-%m-%d %H:%M} UTC")
    session_row = panel.locator("tr[data-class-session]")
    assert session_row.get_by_role("rowheader").inner_text() == starts.strftime("%Y-%m-%d %H:%M")
    assert session_row.locator("td.warmed").inner_text() == "starting now", "its warm-up time (30 min before) has come"
    page.screenshot(path=str(tmp_path / "class-session-scheduled.png"), full_page=True)

    Queue(DEFAULT_QUEUE, connection=rt.redis).enqueue(schedule.prewarm_job)  # what the cron does every minute
    labs = _warmed_labs(rt, activity_id)
    for lab_id in labs:
        wait_state(rt, lab_id, LabState.RUNNING, timeout=30)
    page.reload()
    assert session_row.locator("td.warmed").inner_text().startswith("2 labs started at")
    section = page.locator(f"#activity-{activity_id}")
    for name in LEARNERS.values():
        state = section.locator("tr", has=page.get_by_role("rowheader", name=name)).locator("td.state").inner_text()
        assert state == "running (pre-warmed for class, not opened yet)"
    page.screenshot(path=str(tmp_path / "class-session-warmed.png"), full_page=True)



def _warmed_labs(rt: Runtime, activity_id: int) -> list[int]:
    """The labs the warm-up job (run by the worker process) started for the activity, once both exist."""
    def found() -> list[int]:
        with rt.session() as db:
            labs = list(db.scalars(select(Lab.id).where(Lab.activity_id == activity_id, Lab.prewarmed_by.is_not(None))))
        return labs if len(labs) == len(LEARNERS) else []

    return wait_until(found, timeout=30, what="the warm-up's labs")
