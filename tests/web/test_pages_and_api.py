"""The learner's pages and the lab page's JSON API, over real HTTP on real PostgreSQL/SQLite and Redis."""

from __future__ import annotations

import dataclasses
from typing import Callable

from sqlalchemy import func, select

from app import create_app
from broker import activity, schedule
from broker.models import Lab, User
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer, serve
from tests.support.inline import Clock, lab_state, run_queued_jobs
from tests.support.world import World

CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: "Redis is down"
CLOSED_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/labdesk"

SignIn = Callable[[str], Learner]


def running_lab(rt: Runtime, person: Learner, world: World) -> int:
    """Launch from the home page and let the (fake, instant) backend bring the lab up."""
    lab_id = person.lab_id(person.launch(world.activity_id))
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    return lab_id


def test_a_bad_name_is_refused_on_the_sign_in_page_with_a_readable_message(server: LiveServer) -> None:
    person = Learner(server.url)
    for bad in ("", "   ", "x" * 65):
        response = person.sign_in(bad)
        assert response.status_code == 400
        assert "Enter a name of 1 to 64 characters." in response.text
        assert 'role="alert"' in response.text
    response = person.sign_in("Ada")
    assert response.status_code == 200
    assert "Signed in as Ada." in response.text


def test_launching_from_the_home_page_creates_a_lab_and_shows_its_page(rt: Runtime, world: World, learner: SignIn) -> None:
    ada = learner("Ada")
    home = ada.get("/")
    assert "Test lab" in home.text
    assert f'action="/activities/{world.activity_id}/launch"' in home.text

    response = ada.launch(world.activity_id)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [302]
    lab_id = ada.lab_id(response)
    assert f'data-lab-id="{lab_id}"' in response.text
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        assert (lab.state, lab.user.subject, lab.activity_id) == ("requested", "Ada", world.activity_id)

    again = ada.launch(world.activity_id)  # a double click opens the same lab
    assert ada.lab_id(again) == lab_id
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Lab)) == 1


def test_the_lab_status_never_reveals_where_or_how_to_connect(rt: Runtime, world: World, learner: SignIn) -> None:
    ada = learner("Ada")
    lab_id = running_lab(rt, ada, world)
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        handle = lab.handle
        endpoint = rt.connector(lab.backend).endpoint(handle)
    assert endpoint.password == "fake-secret"  # what must not leak is really there, server-side

    status = ada.get(f"/api/labs/{lab_id}")
    assert status.status_code == 200
    assert status.json()["state"] == "running"
    page = ada.get(f"/labs/{lab_id}")
    for text in (status.text, page.text):
        for secret in ("fake-secret", endpoint.host, f"{endpoint.port}", "handle", handle["key"]):
            assert secret not in text


def test_only_the_owner_can_keep_a_lab_alive_or_read_it(rt: Runtime, world: World, learner: SignIn, server: LiveServer) -> None:
    ada, bob = learner("Ada"), learner("Bob")
    lab_id = ada.lab_id(ada.launch(world.activity_id))

    assert ada.post(f"/api/labs/{lab_id}/keepalive").status_code == 204
    rt.redis.delete(activity.SEEN_KEY)
    for path in (f"/api/labs/{lab_id}/keepalive", f"/api/labs/{lab_id}/leave"):
        response = bob.post(path)
        assert response.status_code == 404
        assert response.json()["error"] == "Not found"
    assert bob.get(f"/api/labs/{lab_id}").status_code == 404
    page = bob.get(f"/labs/{lab_id}")
    assert page.status_code == 404
    assert "This lab does not exist or is not yours." in page.text
    assert rt.redis.zcard(activity.SEEN_KEY) == 0  # Bob's signals were never recorded
    assert bob.post(f"/api/labs/{lab_id}/keepalive").status_code == 404  # reading it did not adopt it

    stranger = Learner(server.url)
    assert stranger.get(f"/api/labs/{lab_id}").status_code == 401
    assert stranger.post(f"/api/labs/{lab_id}/keepalive").status_code == 404


def test_a_keepalive_holds_off_the_idle_sweep(rt: Runtime, world: World, learner: SignIn, clock: Clock) -> None:
    ada = learner("Ada")
    lab_id = running_lab(rt, ada, world)  # idle after 120 s without a sign of life

    clock.advance(100)
    assert ada.post(f"/api/labs/{lab_id}/keepalive").status_code == 204
    clock.advance(100)  # 200 s after start, 100 s after the keepalive
    assert schedule.suspend_idle(rt) == 0
    assert lab_state(rt, lab_id) == "running"

    clock.advance(30)  # now 130 s after the last keepalive
    assert schedule.suspend_idle(rt) == 1
    assert lab_state(rt, lab_id) == "suspending"


def test_leaving_suspends_the_lab_after_the_grace_and_launching_resumes_it(
    rt: Runtime, world: World, learner: SignIn, clock: Clock
) -> None:
    ada = learner("Ada")
    lab_id = running_lab(rt, ada, world)
    grace = rt.settings.leave_grace

    assert ada.post(f"/api/labs/{lab_id}/leave").status_code == 204
    clock.advance(grace - 5)
    assert schedule.suspend_idle(rt) == 0
    clock.advance(10)
    assert schedule.suspend_idle(rt) == 1
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "suspended"

    back = ada.launch(world.activity_id)
    assert ada.lab_id(back) == lab_id
    assert lab_state(rt, lab_id) == "resuming"
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"


def test_with_redis_down_a_launch_is_refused_readably_and_writes_nothing(
    rt: Runtime, world: World, learner: SignIn
) -> None:
    ada = learner("Ada")
    open_lab = ada.lab_id(ada.launch(world.activity_id))
    down = Runtime(dataclasses.replace(rt.settings, redis_url=CLOSED_REDIS))
    for server in serve(create_app(down.settings, down)):
        ada.base_url = server.url  # same browser (the session cookie is valid here too), Redis now down
        bob = Learner(server.url)
        assert bob.sign_in("Bob").status_code == 200  # the database alone is enough to sign in

        response = bob.launch(world.activity_id)
        assert response.status_code == 503
        assert "LabDesk is briefly unavailable" in response.text
        assert "Nothing was changed." in response.text
        assert "Traceback" not in response.text

        keepalive = ada.post(f"/api/labs/{open_lab}/keepalive")
        assert keepalive.status_code == 503
        assert keepalive.json()["error"] == "LabDesk is briefly unavailable"

        health = bob.get("/healthz")
        assert health.status_code == 503
        report = health.json()
        assert report["database"] == "ok"
        assert report["redis"].startswith("failing")
        assert report["status"] == "down"
    with rt.session() as session:
        bob_id = session.scalar(select(User.id).where(User.subject == "Bob"))
        assert session.scalars(select(Lab.id).where(Lab.user_id == bob_id)).all() == []
        assert session.scalars(select(Lab.id)).all() == [open_lab]


def test_with_the_database_down_pages_say_briefly_unavailable(rt: Runtime) -> None:
    down = Runtime(dataclasses.replace(rt.settings, database_url=CLOSED_DATABASE), redis=rt.redis)
    for server in serve(create_app(down.settings, down)):
        person = Learner(server.url)
        response = person.sign_in("Ada")
        assert response.status_code == 503
        assert "LabDesk is briefly unavailable" in response.text
        assert "Traceback" not in response.text
        health = person.get("/healthz")
        assert health.status_code == 503
        report = health.json()
        assert report["database"].startswith("failing") and report["redis"] == "ok"
        assert (report["status"], report["backends"]) == ("down", {})
        metrics = person.get("/metrics")
        assert metrics.status_code == 503


def test_an_unknown_lab_or_activity_is_a_404_page_never_a_traceback(world: World, learner: SignIn, server: LiveServer) -> None:
    ada = learner("Ada")
    for path in ("/labs/999999", "/labs/99999999999999999999", "/labs/not-a-number", "/no/such/page"):
        response = ada.get(path)
        assert response.status_code == 404
        assert response.headers["Content-Type"].startswith("text/html")
        assert "Not found" in response.text
        assert "Traceback" not in response.text
    for lab_id in (999999, 99999999999999999999):
        assert ada.get(f"/api/labs/{lab_id}").json() == {"error": "Not found", "advice": "This lab does not exist or is not yours."}
    missing = ada.launch(999999)
    assert missing.status_code == 404
    assert "Not found" in missing.text

    lab_id = ada.lab_id(ada.launch(world.activity_id))
    stranger = Learner(server.url)
    signed_out = stranger.get(f"/labs/{lab_id}")
    assert signed_out.status_code == 401
    assert "Please sign in" in signed_out.text
    assert stranger.launch(world.activity_id).status_code == 401


def test_a_forged_session_cookie_cannot_keep_someone_elses_lab_alive(
    rt: Runtime, world: World, learner: SignIn, server: LiveServer
) -> None:
    import base64
    import json

    ada, bob = learner("Ada"), learner("Bob")
    ada_lab = ada.lab_id(ada.launch(world.activity_id))
    cookie = bob.http.cookies.get("session")
    payload, _, signature = cookie.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["labs"] = [ada_lab]  # Bob claims Ada's lab, keeping his own signature
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
    mallory = Learner(server.url)
    mallory.http.cookies.set("session", f"{forged}.{signature}")

    assert mallory.post(f"/api/labs/{ada_lab}/keepalive").status_code == 404
    assert mallory.post(f"/api/labs/{ada_lab}/leave").status_code == 404
    assert rt.redis.zscore(activity.SEEN_KEY, str(ada_lab)) is None
