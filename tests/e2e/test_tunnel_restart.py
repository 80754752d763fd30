"""Restarting the desktop tunnel under a learner's open lab page, in a real browser (docs/deploy.md,
"Graceful operations").

Tunnel process A serves the page's desktop. Process B starts on the same address first (SO_REUSEPORT), then
A gets SIGTERM: it stops listening, says `disconnect` to guacd and closes the page's socket with 1001 "going
away". The page reconnects at once through B, without a reload, and shows the desktop again (a new frame
colour, read from the canvas), while the learner sees no more than "Reconnecting…" in the status line:
the "Connection lost" alert, whose "Reconnect now" invites a click, never appears.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from broker.config import Settings
from broker.runtime import Runtime
from tests.e2e.test_desktop_page import desktop_connections, open_lab, require_viewer, session, wait_for_colour, watched
from tests.support.browser import browser, require_browser  # noqa: F401  (browser: a fixture)
from tests.support.e2e_stack import db_url, guacd, ports, settings  # noqa: F401  (fixtures)
from tests.support.guacd_double import GuacdDouble, solid_png
from tests.support.http import LiveServer, serve
from tests.support.tunnel import TunnelProcess
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import make_world

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIRST = (40, 90, 160)  # the frame colour of tests.support.e2e_stack's guacd double
SECOND = (30, 160, 60)

# Everything the learner is shown about the connection, as it changes: the banner above the desktop
# (role=alert) and the status line under it.
RECORD = """() => {
  window.__seen = [];
  window.__sameDocument = true;
  const banner = document.getElementById("reconnect");
  const status = document.getElementById("connection-status");
  const note = () => window.__seen.push({banner: !banner.hidden, text: banner.innerText, status: status.textContent});
  const watch = {attributes: true, childList: true, characterData: true, subtree: true};
  new MutationObserver(note).observe(banner, watch);
  new MutationObserver(note).observe(status, watch);
}"""


@pytest.fixture
def stack(rt: Runtime, settings: Settings, tmp_path: Path, workers: WorkerPool,  # noqa: F811
          ports: dict[str, int]) -> Iterator[tuple[LiveServer, TunnelProcess]]:  # noqa: F811
    """A worker, tunnel process A and the web app over HTTP."""
    require_browser()
    require_viewer()
    make_world(rt, config={"state_dir": str(tmp_path / "fake")})
    workers.start(1)
    from app import create_app

    tunnel = TunnelProcess(settings, tmp_path, ports["tunnel"]).start()
    try:
        for server in serve(create_app(settings, rt), ports["web"]):
            yield server, tunnel
    finally:
        tunnel.stop()


@pytest.fixture
def page(stack: tuple[LiveServer, TunnelProcess], browser: "Browser") -> Iterator["Page"]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    yield watched(context.new_page())
    context.close()


def test_the_desktop_comes_back_by_itself_when_its_tunnel_process_is_replaced(
    stack: tuple[LiveServer, TunnelProcess], page: "Page", guacd: GuacdDouble, settings: Settings,  # noqa: F811
    ports: dict[str, int], tmp_path: Path,  # noqa: F811
) -> None:
    server, old = stack
    open_lab(page, server.url)
    first = session(guacd, 0)
    wait_for_colour(page, FIRST)
    assert desktop_connections(page) == 1
    page.evaluate(RECORD)
    guacd.png = solid_png(*guacd.frame_size, SECOND)  # what the next connection paints: proof of a new frame

    new = TunnelProcess(settings, tmp_path, ports["tunnel"]).start()  # B, on A's address, before A stops
    try:
        signalled = time.monotonic()
        old.process.send_signal(signal.SIGTERM)
        wait_until(lambda: desktop_connections(page) == 2, timeout=15, interval=0.05, what="the page to reconnect")
        reconnected = time.monotonic() - signalled
        wait_for_colour(page, SECOND)
        shown = time.monotonic() - signalled
        print(f"\nreconnected {reconnected:.2f} s after SIGTERM; the new frame shown after {shown:.2f} s")

        assert old.process.wait(timeout=10) == 0
        guacd.wait_for(lambda: first.closed)
        assert first.clean_disconnect, "the old tunnel said `disconnect` to guacd"
        assert session(guacd, 1).ready and new.process.poll() is None
        assert page.evaluate("window.__sameDocument"), "the page was not reloaded"
        seen = page.evaluate("window.__seen")
        assert not any(change["banner"] for change in seen), f"the learner saw the alert: {seen}"
        assert {change["status"] for change in seen} <= {"Reconnecting…", "Connected"}, seen
        assert page.locator("#connection-status").inner_text() == "Connected"
    finally:
        new.stop()
