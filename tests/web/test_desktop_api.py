"""The lab page's desktop API over real HTTP: who gets a connection token, what it reveals, watching, reset.

People arrive as an LMS sends them, through the built-in emulator's signed launches, so the instructor
carries the role the LMS gave them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from broker.models import Backend, Lab
from broker.runtime import Runtime
from broker.tunnel_tokens import TokenMinter
from tests.support.http import LiveServer
from tests.support.lms_browser import Person, serve_with_emulator, settings  # noqa: F401  (fixtures: settings)
from tests.support.inline import lab_state, run_queued_jobs

pytestmark = pytest.mark.slow
SECRET_PARTS = ("10.9.8.7", "5901", "pw-XYZ", "10.9.8.8")
ENDPOINTS = [
    {"protocol": "vnc", "host": "10.9.8.7", "port": 5901, "password": "pw-XYZ"},
    {"protocol": "ssh", "host": "10.9.8.8", "port": 22, "username": "lab", "password": "pw-XYZ", "name": "server"},
]


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serve_with_emulator(rt, port, tmp_path, endpoints=ENDPOINTS)


def learner_with_running_lab(rt: Runtime, sub: str) -> tuple[Person, int]:
    person = Person(rt, sub)
    lab_id = int(person.landed.url.rsplit("/", 1)[1])
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    return person, lab_id


def test_a_learner_gets_a_token_for_their_running_lab_and_nothing_secret(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = learner_with_running_lab(rt, "emu-learner-1")
    page = f"/labs/{lab_id}"
    answer = ada.post(f"/api/labs/{lab_id}/connection", page, json={"host": "server"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["host"] == "server" and body["protocol"] == "ssh"
    assert body["hosts"] == [{"name": "main", "protocol": "vnc"}, {"name": "server", "protocol": "ssh"}]
    assert body["tunnel_url"] == "ws://127.0.0.1:8001/tunnel"
    grant = TokenMinter("test-secret").open(body["token"])
    assert (grant.lab_id, grant.host, grant.read_only, grant.watch) == (lab_id, "server", False, False)
    status = ada.http.get(f"{ada.base}/api/labs/{lab_id}", timeout=10)
    for text in (answer.text, status.text, ada.http.get(ada.base + page, timeout=10).text):
        assert not [part for part in SECRET_PARTS if part in text], "no address, port or password reaches the browser"
    assert status.json()["hosts"] == body["hosts"] and status.json()["watchers"] == []


def test_tokens_are_refused_without_csrf_for_others_and_for_labs_not_running(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = learner_with_running_lab(rt, "emu-learner-1")
    bob, _ = learner_with_running_lab(rt, "emu-learner-2")
    assert ada.http.post(f"{ada.base}/api/labs/{lab_id}/connection", json={}, timeout=10).status_code == 400
    assert bob.post(f"/api/labs/{lab_id}/connection", "/", json={}).status_code == 404
    unknown = ada.post(f"/api/labs/{lab_id}/connection", f"/labs/{lab_id}", json={"host": "nope"})
    assert unknown.status_code == 404 and "no machine called 'nope'" in unknown.json()["error"]
    with rt.session() as db:
        db.get(Lab, lab_id).state = "suspended"
        db.commit()
    refused = ada.post(f"/api/labs/{lab_id}/connection", f"/labs/{lab_id}", json={})
    assert refused.status_code == 409 and refused.json()["state"] == "suspended"


def test_only_an_instructor_of_the_course_may_watch_and_only_read_only(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = learner_with_running_lab(rt, "emu-learner-1")
    bob, _ = learner_with_running_lab(rt, "emu-learner-2")
    assert bob.post(f"/api/labs/{lab_id}/watch-connection", "/", json={}).status_code == 403
    assert bob.http.get(f"{bob.base}/teach/labs/{lab_id}/watch", timeout=10).status_code == 403
    teacher = Person(rt, "emu-instructor-1")
    assert f'href="/teach/labs/{lab_id}/watch"' in teacher.landed.text, "the instructor view links to each running lab"
    page = teacher.http.get(f"{teacher.base}/teach/labs/{lab_id}/watch", timeout=10)
    with rt.session() as db:
        learner_name = db.get(Lab, lab_id).user.name
    assert page.status_code == 200 and f"Watching {learner_name}" in page.text and "read-only" in page.text
    answer = teacher.post(f"/api/labs/{lab_id}/watch-connection", f"/teach/labs/{lab_id}/watch", json={})
    assert answer.status_code == 200
    grant = TokenMinter("test-secret").open(answer.json()["token"])
    assert grant.watch and grant.read_only and grant.lab_id == lab_id
    followed = teacher.http.get(f"{teacher.base}/api/labs/{lab_id}", timeout=10)
    assert followed.status_code == 200 and followed.json()["state"] == "running", "the watching instructor follows the lab's state"
    assert bob.http.get(f"{bob.base}/api/labs/{lab_id}", timeout=10).status_code == 404
    rt.redis.hset(f"labdesk:tunnel:watchers:{lab_id}", "s1", "Professor Plum")
    assert ada.http.get(f"{ada.base}/api/labs/{lab_id}", timeout=10).json()["watchers"] == ["Professor Plum"]


def test_reset_deletes_the_lab_and_starts_a_fresh_one(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = learner_with_running_lab(rt, "emu-learner-1")
    bob, _ = learner_with_running_lab(rt, "emu-learner-2")
    assert bob.post(f"/api/labs/{lab_id}/reset", "/", json={}).status_code == 404
    answer = ada.post(f"/api/labs/{lab_id}/reset", f"/labs/{lab_id}", json={})
    assert answer.status_code == 202
    fresh = answer.json()["lab_id"]
    assert fresh != lab_id and lab_state(rt, lab_id) == "deleting" and lab_state(rt, fresh) == "requested"
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "deleted" and lab_state(rt, fresh) == "running"
    with rt.session() as db:
        assert db.get(Lab, lab_id).endpoints is None, "a deleted lab keeps no credentials"


def test_a_lab_waiting_for_a_free_machine_says_so(lms: LiveServer, rt: Runtime, tmp_path: Path) -> None:
    with rt.session() as db:
        backend = db.scalar(select(Backend).where(Backend.name == "fake"))
        backend.config = {**backend.config, "capacity": 1}
        db.commit()
    learner_with_running_lab(rt, "emu-learner-1")
    bob = Person(rt, "emu-learner-2")
    lab_id = int(bob.landed.url.rsplit("/", 1)[1])
    run_queued_jobs(rt)
    status = bob.http.get(f"{bob.base}/api/labs/{lab_id}", timeout=10).json()
    assert status["state"] == "provisioning" and status["error_kind"] == "capacity"
    assert status["message"], "the backend's own words on capacity reach the page"
