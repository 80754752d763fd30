"""A browser that arrives at LabDesk the way an LMS sends people: through a launch from the built-in emulator."""

from __future__ import annotations

import re

import pytest
import requests
from redis import Redis

from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import select

from app import create_app
from broker.config import Settings
from broker.models import Backend
from broker.runtime import Runtime
from lti.emulator import launches
from lti.emulator.registration import register_with_tool
from tests.conftest import make_settings
from tests.emulator.flow import auto_forms
from tests.support.http import LiveServer, serve
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import add_lab_catalogue


def lms_settings(db_url: str, tmp_path: Path, port: int) -> Settings:
    """Settings for LabDesk on `port` with its emulator, new activities on the fake backend."""
    return make_settings(db_url, tmp_path, public_url=f"http://127.0.0.1:{port}", default_backend="fake")


def serve_with_emulator(rt: Runtime, port: int, tmp_path: Path, **backend_config: Any) -> Iterator[LiveServer]:
    """The `local-desktop` lab on the fake backend (with extra settings), the emulator registered, the
    app served on `port`."""
    add_lab_catalogue(rt, str(tmp_path / "fake"), "local-desktop")
    if backend_config:
        with rt.session() as db:
            backend = db.scalar(select(Backend).where(Backend.name == "fake"))
            backend.config = {**backend.config, **backend_config}
            db.commit()
    register_with_tool(rt)
    yield from serve(create_app(rt.settings, rt), port)


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    """The test's settings for LabDesk beside the emulator: a module imports this fixture to use it."""
    return lms_settings(db_url, tmp_path, port)


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
    """The emulator and LabDesk on one port, registered with each other (import it like `settings`)."""
    yield from serve_with_emulator(rt, port, tmp_path)


class Person:
    """A browser that arrived through an emulator launch."""

    def __init__(self, rt: Runtime, sub: str, **launch: Any) -> None:
        """`launch`: `launches.start`'s link_id and context, for a link or course other than the demo's."""
        self.http = requests.Session()
        page = self.http.get(launches.start(rt, sub, **launch), timeout=10)
        form = auto_forms(page.text)[0]
        self.landed = self.http.post(form.action, data=form.fields, timeout=10)
        assert self.landed.status_code == 200, self.landed.text
        self.base = form.action.split("/lti/")[0]

    def csrf(self, path: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get(self.base + path, timeout=10).text)
        assert found, f"no CSRF token on {path}"
        return found.group(1)

    def post(self, path: str, csrf_from: str, **kwargs: object) -> requests.Response:
        headers = {"X-CSRF-Token": self.csrf(csrf_from)}
        return self.http.post(self.base + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def running_lab(rt: Runtime, sub: str) -> tuple[Person, int]:
    """`sub` launched from the emulator, and the lab they landed on, started by its queued jobs (run here)."""
    person = Person(rt, sub)
    lab_id = int(person.landed.url.rsplit("/", 1)[1])
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    return person, lab_id


def get(person: Person, path: str) -> requests.Response:
    return person.http.get(person.base + path, timeout=10)
