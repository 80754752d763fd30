"""An instructor bulk-suspends a class from the course dashboard, in chromium.

Two learners launch the demo link from the LMS emulator and a real rq worker process brings their labs up
on the fake backend; the instructor launches too (the signed LTI launch, in the browser), follows the
activity view's link to the course dashboard, sees both labs running, presses "Suspend all", confirms,
and sees both labs suspended by the worker.

Screenshots are saved in the test's tmp_path: dashboard-running.png, suspend-all-confirm.png,
dashboard-suspended.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from redis import Redis

from broker.config import Settings
from broker.lifecycle import LabState
from broker.runtime import Runtime
from lti.emulator import launches
from tests.support.browser import require_browser
from tests.support.http import LiveServer
from tests.support.lms_browser import Person, lms_settings, serve_with_emulator
from tests.support.waiting import wait_state
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
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    return lms_settings(db_url, tmp_path, port)


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
