"""An admin filters the labs by state in Debian's chromium (Playwright) and bulk-suspends two running labs,
which real `labdesk worker` processes then suspend on the fake backend. Screenshots are kept in the
test's directory: the filtered list, the outcome, the suspended labs, and the usage chart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from app import create_app
from broker import admins, services
from broker.lifecycle import LabState
from broker.runtime import Runtime
from tests.support.http import LiveServer, serve
from tests.support.waiting import wait_state
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner
from tests.support.admin_browser import PASSWORD
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser]

S = LabState


@pytest.fixture
def console(rt: Runtime, world: World, workers: WorkerPool) -> Iterator[tuple[LiveServer, list[int]]]:
    """Three labs run by a real worker (the third then suspended), a local admin, the app over HTTP."""
    with rt.session() as db:
        admins.create_local(db, "root", PASSWORD)
        db.commit()
    workers.start()
    learners = [world.user_id] + [add_learner(rt, f"learner-{n}") for n in (2, 3)]
    labs = [services.launch(rt, uid, world.activity_id, "test").id for uid in learners]
    for lab_id in labs:
        wait_state(rt, lab_id, S.RUNNING)
    services.request_state(rt, labs[2], S.SUSPENDING, actor="test", reason="set up")
    wait_state(rt, labs[2], S.SUSPENDED)
    for server in serve(create_app(rt.settings, rt)):
        yield server, labs


def test_an_admin_filters_running_labs_and_bulk_suspends_two(
    rt: Runtime, console: tuple[LiveServer, list[int]], browser: "Browser", tmp_path: Path
) -> None:
    server, (first, second, asleep) = console
    page = browser.new_page()
    page.goto(server.url + "/admin/login")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="LabDesk admin").wait_for()

    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Labs").click()
    page.get_by_role("heading", name="Labs").wait_for()
    assert page.get_by_role("checkbox").count() == 3, "every live lab before filtering"
    page.get_by_label("State").select_option("running")
    page.get_by_role("button", name="Filter").click()
    page.get_by_text("2 labs match.").wait_for()
    assert "state=running" in page.url
    assert page.get_by_label(f"Select lab {asleep}").count() == 0
    page.screenshot(path=str(tmp_path / "admin-labs-running.png"), full_page=True)

    page.get_by_label(f"Select lab {first}").check()
    page.get_by_label(f"Select lab {second}").check()
    page.get_by_role("button", name="Suspend").click()
    page.get_by_role("status").filter(has_text="Suspend: 2 done, 0 skipped.").wait_for()
    page.screenshot(path=str(tmp_path / "admin-labs-suspended-outcome.png"), full_page=True)
    for lab_id in (first, second):
        wait_state(rt, lab_id, S.SUSPENDED)

    page.get_by_label("State").select_option("suspended")
    page.get_by_role("button", name="Filter").click()
    page.get_by_text("3 labs match.").wait_for()
    table = page.get_by_role("table", name="Labs")
    assert table.get_by_role("row").filter(has_text="suspended").count() == 3
    page.screenshot(path=str(tmp_path / "admin-labs-now-suspended.png"), full_page=True)

    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Usage").click()
    page.get_by_role("heading", name="Usage and cost").wait_for()
    chart = page.get_by_role("img", name="Lab-hours per day, running and suspended")
    assert chart.is_visible()
    page.screenshot(path=str(tmp_path / "admin-usage.png"), full_page=True)
