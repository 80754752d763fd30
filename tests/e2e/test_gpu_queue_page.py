"""The GPU queue as a learner sees it, in chromium: their place in line and an estimate while every GPU is
busy, then their lab starting by itself when another learner's lab ends and lets its GPU go.

The stack is test_desktop_page's (the app over HTTP, a real worker, the tunnel, the guacd double) on the
fake backend offering one GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from broker import services
from broker.config import Settings
from broker.lifecycle import LabState
from broker.models import Activity, Lab
from broker.runtime import Runtime
from tests.e2e.test_desktop_page import (  # noqa: F401 - fixtures
    VIEWPORT, browser, db_url, guacd, idle_seconds, open_lab, ports, require_viewer, settings, watched,
)
from tests.support.browser import require_browser
from tests.support.http import LiveServer
from tests.support.tunnel import serve_with_tunnel
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner, make_world

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def gpu_world(rt: Runtime, tmp_path: Path) -> World:
    gpu = [{"key": "h1/gpu0", "host": "h1", "model": "nvidia-t4"}]
    world = make_world(rt, config={"state_dir": str(tmp_path / "fake"), "gpus": gpu})
    with rt.session() as session:
        session.get(Activity, world.activity_id).image.spec = {"resources": {"gpu": "nvidia-t4"}}
        session.commit()
    return world


@pytest.fixture
def stack(rt: Runtime, settings: Settings, tmp_path: Path, workers: WorkerPool, ports: dict[str, int], gpu_world: World) -> Iterator[LiveServer]:  # noqa: F811
    require_browser()
    require_viewer()
    yield from serve_with_tunnel(rt, settings, tmp_path, workers, ports)


def test_a_learner_sees_their_place_in_line_and_the_lab_starts_by_itself(
    rt: Runtime, stack: LiveServer, browser: "Browser", gpu_world: World, tmp_path: Path  # noqa: F811
) -> None:
    holder = services.launch(rt, add_learner(rt, "first-learner"), gpu_world.activity_id, "learner")
    wait_until(lambda: services_state(rt, holder.id) == "running", timeout=30, what="the first learner's GPU lab")

    page = watched(browser.new_context(viewport=VIEWPORT).new_page())
    open_lab(page, stack.url + "/")
    state, progress = page.locator("#state"), page.locator("#progress-text")
    wait_until(lambda: state.text_content() == "Waiting for a GPU…", timeout=15, what="the queued label")
    assert progress.text_content() == "All GPUs are in use. You are number 1 in line, about 30 minutes; your lab starts by itself."
    page.screenshot(path=str(tmp_path / "gpu-queue.png"))

    services.request_state(rt, holder.id, LabState.DELETING, "first-learner", "done for today")
    wait_until(lambda: state.text_content() == "Your lab is running.", timeout=30, what="the lab started by itself")


def services_state(rt: Runtime, lab_id: int) -> str:
    with rt.session() as session:
        return session.get(Lab, lab_id).state
