"""Trust levels in chromium: a lab that opens at trust level 1 refuses a learner with the reason and the
lab that unlocks it; the learner passes that lab's check with "Check my work" and then gets into it,
where the lab page shows the hours left of the lab's weekly limit; once they run out, the usage sweep
suspends the lab and the page says why, with "Resume my lab" disabled.

The instructor launches both links of the emulator's demo course (so LabDesk knows both activities) and
sets the second one's minimum trust level (and hours per week) in the **Limits** form of its instructor view. The learner comes
from the LMS emulator (the signed LTI launch), a real `labdesk worker` process brings labs up on the fake
backend and runs the check through the `local` grading hook in the lab's home (the fake backend's folder).

Screenshots are saved in the test's tmp_path: limits-saved.png, trust-refused.png, check-passed.png,
trust-unlocked.png, hours-used.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from sqlalchemy import select

from broker import usage_limits
from broker.lifecycle import LabState
from broker.models import Activity, Image
from broker.runtime import Runtime
from lti.emulator import launches, site, store
from tests.support.browser import browser, require_browser  # noqa: F401  (a fixture)
from tests.support.http import LiveServer
from tests.support.lms_browser import serve_with_emulator, settings  # noqa: F401  (fixtures: settings)
from tests.support.waiting import wait_state
from tests.support.workers import WorkerPool

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORT = {"width": 1200, "height": 900}
GATED = "Kernel debugging"
CHECK = {"id": "hello", "title": "Create ~/hello.txt", "builtin": "file-exists", "path": "hello.txt"}


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    """SQLite only: the embedded default, shared by the web threads and the worker process."""
    return sqlite_db_url


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
    require_browser()
    for served in serve_with_emulator(rt, port, tmp_path):
        with rt.session() as db:  # the demo lab gets one check, which passes once ~/hello.txt exists
            db.scalar(select(Image).where(Image.slug == "local-desktop")).spec = {"checks": [CHECK]}
            db.commit()
        yield served


PAGE_ERRORS: list[str] = []


def window(browser: "Browser") -> "Page":
    """A new browser window whose script errors are kept in PAGE_ERRORS."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.on("pageerror", lambda error: PAGE_ERRORS.append(f"{page.url}: {error}"))
    return page


def test_a_learner_below_the_trust_level_is_told_why_and_gets_in_after_passing_an_earlier_check(
    rt: Runtime, lms: LiveServer, workers: WorkerPool, browser: "Browser", tmp_path: Path  # noqa: F811
) -> None:
    PAGE_ERRORS.clear()
    workers.start(1)
    store.ensure_seeded(rt)
    gated_link = store.add_link(rt, site.COURSE_ID, GATED, custom={"lab": "local-desktop"})["id"]

    # The instructor opens both links (LabDesk creates their activities) and sets the trust level.
    teacher = window(browser)
    teacher.goto(launches.start(rt, "emu-instructor-1", document_target="window"))
    teacher.wait_for_url("**/teach/activities/*")
    teacher.goto(launches.start(rt, "emu-instructor-1", link_id=gated_link, document_target="window"))
    teacher.wait_for_url("**/teach/activities/*")
    assert teacher.get_by_role("heading", level=1).inner_text() == GATED
    teacher.locator("summary", has_text="Limits").click()
    teacher.get_by_label("Hours per week (each learner)").fill("5")
    teacher.get_by_label("Minimum trust level").fill("1")
    teacher.get_by_role("button", name="Save the limits").click()
    teacher.get_by_role("status").filter(has_text="The limits are saved.").wait_for()
    assert "(5 hours per learner per week, opens at trust level 1)" in teacher.locator("#limits-settings summary").inner_text()
    teacher.screenshot(path=str(tmp_path / "limits-saved.png"), full_page=True)
    with rt.session() as db:
        assert db.scalar(select(Activity.min_trust_level).where(Activity.title == GATED)) == 1

    # The learner, at trust level 0, is refused with the reason and what unlocks the lab.
    page = window(browser)
    page.goto(launches.start(rt, "emu-learner-1", link_id=gated_link, document_target="window"))
    page.get_by_role("heading", name="This lab cannot open now").wait_for()
    assert page.get_by_role("alert").inner_text() == (
        "This lab opens at trust level 1. You have 0: pass the checks of 'Demo desktop lab' to unlock it.")
    page.screenshot(path=str(tmp_path / "trust-refused.png"), full_page=True)

    # They open the demo lab, do its work and check it.
    page.goto(launches.start(rt, "emu-learner-1", document_target="window"))
    page.wait_for_url(re.compile(r".*/labs/\d+$"))
    lab_id = int(page.url.rsplit("/", 1)[1])
    wait_state(rt, lab_id, LabState.RUNNING, timeout=60)
    page.get_by_text("Your lab is running.", exact=True).wait_for(timeout=30000)
    (tmp_path / "fake").mkdir(exist_ok=True)
    (tmp_path / "fake" / "hello.txt").write_text("hi\n")  # the lab's home on the fake backend
    page.get_by_role("button", name="Check my work").click()
    page.locator("#check-status").filter(has_text="1 of 1 check passed.").wait_for(timeout=60000)
    page.screenshot(path=str(tmp_path / "check-passed.png"), full_page=True)

    # Level 1 now: the same launch opens the lab.
    page.goto(launches.start(rt, "emu-learner-1", link_id=gated_link, document_target="window"))
    page.wait_for_url(re.compile(r".*/labs/\d+$"))
    assert page.get_by_role("heading", level=1).inner_text() == GATED
    gated_lab = int(page.url.rsplit("/", 1)[1])
    assert gated_lab != lab_id
    wait_state(rt, gated_lab, LabState.RUNNING, timeout=60)
    page.get_by_text("Your lab is running.", exact=True).wait_for(timeout=30000)
    hours_left = page.locator("#weekly-limit")
    assert re.fullmatch(r"This week you have (5 hours|4 hours 59 minutes) left of this lab's 5 hours; the count starts "
                        r"again on Monday \d+ \w+ at 00:00 UTC\.", hours_left.inner_text()), hours_left.inner_text()
    page.screenshot(path=str(tmp_path / "trust-unlocked.png"), full_page=True)

    # The hours run out (a limit of 3.6 seconds, for the test): the usage sweep suspends the lab, the worker
    # saves it, and the page says why and until when, with "Resume my lab" disabled.
    with rt.session() as db:
        db.scalar(select(Activity).where(Activity.title == GATED)).weekly_hours_limit = 0.001
        db.commit()
    page.wait_for_timeout(4000)
    assert usage_limits.sweep(rt) == 1
    wait_state(rt, gated_lab, LabState.SUSPENDED, timeout=60)
    page.get_by_role("button", name="Resume my lab").wait_for(timeout=30000)
    page.locator("#weekly-limit.banner-warning").wait_for(timeout=15000)
    assert re.fullmatch(r"You have used your 0\.001 hours of this lab for this week\. It opens again on Monday \d+ \w+ at "
                        r"00:00 UTC\.", hours_left.inner_text()), hours_left.inner_text()
    assert page.get_by_role("button", name="Resume my lab").is_disabled()
    page.screenshot(path=str(tmp_path / "hours-used.png"), full_page=True)
    assert PAGE_ERRORS == []
