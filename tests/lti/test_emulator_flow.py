"""The whole LMS round trip with the built-in emulator over real HTTP: a learner launched from the
emulator's course lands in their lab, a score recorded for them travels through the outbox on a real rq
worker, and the emulator's gradebook holds it; while the emulator is "down" the score waits, unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests
from redis import Redis
from sqlalchemy import select

from app import create_app
from broker.config import Settings
from broker.models import Lab, ScoreOutbox
from broker.runtime import Runtime
from broker.scores import record_score
from lti.emulator import launches, site, store
from lti.emulator.registration import register_with_tool
from tests.conftest import make_settings
from tests.emulator.flow import auto_forms
from tests.support.world import add_lab_catalogue
from tests.support.http import LiveServer, serve
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    return make_settings(db_url, tmp_path, public_url=f"http://127.0.0.1:{port}", default_backend="fake", outbox_interval=1)


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
    add_lab_catalogue(rt, str(tmp_path / "fake"), "local-desktop")
    register_with_tool(rt)
    yield from serve(create_app(rt.settings, rt), port)


def launch_from_emulator(rt: Runtime, sub: str) -> requests.Response:
    """A browser following the emulator's launch: login → auth → auto-posted id_token → LabDesk."""
    browser = requests.Session()
    page = browser.get(launches.start(rt, sub), timeout=10)
    form = auto_forms(page.text)[0]
    return browser.post(form.action, data=form.fields, timeout=10)


def test_a_score_reaches_the_emulators_gradebook_after_an_outage(lms: LiveServer, rt: Runtime, workers: WorkerPool) -> None:
    landed = launch_from_emulator(rt, "emu-learner-1")
    assert landed.status_code == 200 and "/labs/" in landed.url
    with rt.session() as db:
        lab = db.scalar(select(Lab))
        assert lab is not None
    store.set_outage(rt, True)
    workers.start(1)
    outbox_id = record_score(rt, lab.activity_id, lab.user_id, 9, 10, "Completed", "FullyGraded")
    wait_until(lambda: _row(rt, outbox_id).attempts >= 1, timeout=30, what="a delivery attempt during the outage")
    first = _row(rt, outbox_id)
    assert first.state == "pending" and "503" in first.last_error
    store.set_outage(rt, False)
    wait_until(lambda: _row(rt, outbox_id).state == "sent", timeout=60, what="delivery once the LMS is back")
    received = [score for by_user in store.scores(rt, site.COURSE_ID).values() for score in by_user.values()]
    assert len(received) == 1 and received[0]["scoreGiven"] == 9 and received[0]["userId"] == "emu-learner-1"
    assert received[0]["timestamp"] == first.payload["timestamp"]  # the retry resent the same payload


def _row(rt: Runtime, outbox_id: int) -> ScoreOutbox:
    with rt.session() as db:
        row = db.get(ScoreOutbox, outbox_id)
        assert row is not None
        return row


def test_the_instructor_view_lists_the_whole_roster_across_pages(lms: LiveServer, rt: Runtime) -> None:
    browser = requests.Session()
    page = browser.get(launches.start(rt, "emu-instructor-1"), timeout=10)
    form = auto_forms(page.text)[0]
    landed = browser.post(form.action, data=form.fields, timeout=10)
    assert landed.status_code == 200 and "Instructor view" in landed.text
    roster = browser.get(landed.url + "?roster=1", timeout=30)
    members = store.members(rt, site.COURSE_ID)
    assert len(members) > 10  # more than one NRPS page
    assert roster.text.count("<li>") >= len(members)
    assert "Alan Turing" in roster.text
