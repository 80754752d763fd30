"""The whole product path with real parts: the app over HTTP, `labdesk worker` processes, a real
Xvfb + x11vnc desktop from the local connector, and chromium driving the learner's pages.

A learner signs in, opens the lab, watches it come up, and closes the tab; the page's `pagehide` beacon
tells the broker, the idle sweep suspends the desktop after the grace, and "Resume my lab" brings the
same lab back. Underneath, a VNC client proves the desktop is really there (and really paused).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from redis import Redis

from app import create_app
from broker import activity, schedule
from broker.config import Settings
from broker.connector import DesktopEndpoint
from broker.models import Lab, LabEvent
from broker.runtime import Runtime
from connectors.local.connector import LocalConnector
from tests import rfb
from tests.conftest import make_settings
from tests.support.browser import require_browser, require_desktop
from tests.support.http import LiveServer, serve
from tests.support.inline import lab_state
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, make_world
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.desktop, pytest.mark.slow]

LEAVE_GRACE = 1
RUNNING = "Your lab is running."
SUSPENDED = "Your lab is suspended. Resume it to continue where you left off."
ON_THE_WAY = {"requested", "provisioning", "Waiting for a lab machine…", "Preparing your lab…"}


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    """The embedded default's database: one host, SQLite shared by the web threads and the workers."""
    return sqlite_db_url


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(db_url, tmp_path, leave_grace=LEAVE_GRACE)


@pytest.fixture
def desktops(rt: Runtime, tmp_path: Path) -> Iterator[World]:
    """A course whose activity runs on the local connector; every desktop is ended afterwards."""
    require_browser()
    require_desktop()
    state_dir = tmp_path / "desktops"
    world = make_world(rt, kind="local", config={"state_dir": str(state_dir)}, backend_name="local")
    yield world
    connector = LocalConnector("cleanup", {"state_dir": str(state_dir)})
    for managed in connector.list_managed():
        connector.delete(managed.handle)


@pytest.fixture
def stack(desktops: World, workers: WorkerPool, rt: Runtime) -> Iterator[LiveServer]:
    """Workers on every queue (started after the backend exists), and the web app over HTTP."""
    workers.start(1)
    yield from serve(create_app(rt.settings, rt))


def watch_state(page: "Page", want: str, timeout: float = 60) -> list[str]:
    """The lab page's status lines, in the order shown, until it shows `want`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != want:
        assert time.monotonic() < deadline, f"the page never showed {want!r}; it showed {seen}"
        text = (page.locator("#state").text_content() or "").strip()
        if not seen or seen[-1] != text:
            seen.append(text)
        time.sleep(0.05)
    return seen


def endpoint_of(rt: Runtime, lab_id: int) -> DesktopEndpoint:
    """Where guacd would connect, found server-side as the tunnel will."""
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        return rt.connector(lab.backend).endpoint(lab.handle)


def left(rt: Runtime, lab_id: int) -> bool:
    """The broker has heard the page say "I left" (a negative score)."""
    score = rt.redis.zscore(activity.SEEN_KEY, str(lab_id))
    return score is not None and score < 0


def test_a_learner_opens_leaves_and_resumes_a_real_desktop(
    rt: Runtime, desktops: World, stack: LiveServer, browser: "Browser", tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    page = context.new_page()
    page.goto(stack.url)
    page.get_by_label("Your name").fill("Ada")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as Ada.").wait_for()

    page.get_by_role("button", name="Open lab").click()
    page.wait_for_url(re.compile(r"/labs/\d+$"))
    lab_id = int(page.url.rsplit("/", 1)[1])
    shown = watch_state(page, RUNNING)
    assert ON_THE_WAY & set(shown), f"no progress was shown before the lab ran: {shown}"
    assert page.eval_on_selector("#progress", "bar => bar.value") == 100
    assert page.locator("#resume").is_hidden()
    page.screenshot(path=str(tmp_path / "running-lab.png"), full_page=True)

    endpoint = endpoint_of(rt, lab_id)
    width, height = rfb.connect(endpoint.host, endpoint.port, endpoint.password)
    assert width > 0 and height > 0
    status = page.request.get(f"{stack.url}/api/labs/{lab_id}")
    assert status.json()["state"] == "running"
    for text in (status.text(), page.content()):
        assert endpoint.password not in text and str(endpoint.port) not in text

    page.close(run_before_unload=True)  # the tab closes: pagehide sends the leave beacon
    wait_until(lambda: left(rt, lab_id), timeout=10, what="the leave beacon")
    time.sleep(LEAVE_GRACE + 0.2)
    assert schedule.suspend_idle(rt) == 1
    wait_until(lambda: lab_state(rt, lab_id) == "suspended", timeout=30, what="the lab to be suspended")
    with pytest.raises(OSError):  # the stopped x11vnc accepts nothing any more (timeout or refusal)
        rfb.connect(endpoint.host, endpoint.port, endpoint.password, timeout=1)

    page = context.new_page()
    page.goto(f"{stack.url}/labs/{lab_id}")
    watch_state(page, SUSPENDED, timeout=10)
    page.get_by_role("button", name="Resume my lab").click()
    page.wait_for_url(f"{stack.url}/labs/{lab_id}")
    watch_state(page, RUNNING)
    assert rfb.connect(*_address(endpoint_of(rt, lab_id))) == (width, height)

    with rt.session() as session:
        moves = [(e.from_state, e.to_state) for e in session.query(LabEvent).filter_by(lab_id=lab_id).order_by(LabEvent.id)]
    path = ["requested", "provisioning", "running", "suspending", "suspended", "resuming", "running"]
    assert moves == [("", "requested")] + list(zip(path, path[1:]))
    context.close()


def _address(endpoint: DesktopEndpoint) -> tuple[str, int, str]:
    return endpoint.host, endpoint.port, endpoint.password or ""
