"""The console's Backends section over real HTTP: admins only (and CSRF) on every page and action; adding a
backend validates exactly as `labdesk backends add` (the error names the key, nothing is stored) and seals
its secrets, which no page shows afterwards; test connection queues the health check on the backend's
queue; capacity, draining and prices are saved; every action is audited."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
import requests
from rq import Queue
from sqlalchemy import select

from broker import schedule
from broker.models import AuditEvent, Backend
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.support.admin_browser import Browser, signed_in_root

SECRET = "hunter2-very-secret"
ACTIONS = ("/admin/backends", "/admin/backends/cloud/check", "/admin/backends/cloud/drain",
           "/admin/backends/cloud/capacity", "/admin/backends/cloud/prices")


@pytest.fixture
def admin(rt: Runtime, server: LiveServer) -> Browser:
    """A browser signed in as the local admin `root`."""
    return signed_in_root(rt, server.url)


def add(browser: Browser, **fields: str) -> requests.Response:
    form = {"name": "cloud", "kind": "fake", "config": "{}", "secrets": "", **fields}
    return browser.post("/admin/backends", data={**form, "csrf_token": browser.token("/admin/backends")})


def form_token(person: Learner) -> str:
    """A valid CSRF token of this browser's session (from the sign-in form, which anyone may load)."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', person.get("/admin/login").text)
    assert found
    return found.group(1)


def stored(rt: Runtime) -> dict[str, Backend]:
    with rt.session() as db:
        return {b.name: b for b in db.scalars(select(Backend))}


def audit_rows(rt: Runtime, prefix: str = "backend.") -> list[tuple[str, str, str, str]]:
    with rt.session() as db:
        return [(e.action, e.actor, e.target, e.address) for e in
                db.scalars(select(AuditEvent).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.id))]


def test_backends_need_an_admin(rt: Runtime, server: LiveServer, learner: Callable[[str], Learner]) -> None:
    nobody = Browser(server.url)
    page = nobody.get("/admin/backends", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].startswith("/admin/login?next=/admin/backends")
    ada = learner("Ada")
    for person in (nobody, ada):
        token = form_token(person)
        for path in ACTIONS:
            refused = person.post(path, data={"csrf_token": token, "name": "cloud", "kind": "fake", "config": "{}"},
                                  allow_redirects=False)
            assert refused.status_code == 403 and "Admins only" in refused.text, path
    assert stored(rt) == {} and audit_rows(rt) == []


def test_every_backend_post_needs_the_csrf_token(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    assert add(admin, config=f'{{"state_dir": "{fake_dir}"}}').status_code == 200
    for path in ACTIONS:
        refused = admin.post(path, data={"name": "other", "kind": "fake", "config": "{}", "capacity": "3", "draining": "1"})
        assert refused.status_code == 400 and "This form has expired" in refused.text, path
    backend = stored(rt)["cloud"]
    assert (set(stored(rt)), backend.capacity, backend.draining) == ({"cloud"}, None, False)


@pytest.mark.parametrize(("fields", "reason", "field"), [
    ({"kind": "vagrant", "config": '{"bogus": 1}'}, "bogus: unknown key", "config"),
    ({"kind": "libvirt", "config": "{}"}, "hosts: required", "config"),
    ({"config": "{not json"}, "not valid JSON", "config"),
    ({"config": "[1, 2]", "secrets": "token=abc"}, "must be a JSON object", "config"),
    ({"secrets": "just-a-value-no-key"}, "expected KEY=VALUE", "secrets"),
    ({"kind": "nope"}, "no connector kind &#39;nope&#39; is installed", "config"),
    ({"name": "has space"}, "a name is 1-64 letters", "name"),
])
def test_a_bad_backend_is_refused_on_the_form_and_nothing_is_stored(
    rt: Runtime, admin: Browser, fields: dict[str, str], reason: str, field: str
) -> None:
    refused = add(admin, **fields)
    assert refused.status_code == 400
    alert = re.search(r'<p class="error" role="alert">Not added: (.*?)</p>', refused.text, re.S)
    assert alert and reason in alert.group(1), refused.text
    assert re.search(f'id="{field}" name="{field}"[^>]*aria-invalid="true"', refused.text), "the field at fault is marked"
    assert "just-a-value-no-key" not in refused.text, "a bad secret line is not echoed"
    assert stored(rt) == {} and audit_rows(rt) == []


def test_a_good_backend_is_stored_with_sealed_secrets_that_no_page_shows(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    added = add(admin, name="cloud", config=f'{{"state_dir": "{fake_dir}", "region": "north"}}',
                secrets=f"password={SECRET}\n\ntoken=t0k=en-{SECRET}\n")
    assert added.status_code == 200 and added.url.endswith("/admin/backends")
    assert "Backend cloud (fake) added; its secrets are sealed." in added.text
    row = re.search(r'<tr id="backend-cloud">(.*?)</tr>', added.text, re.S)
    assert row and "<td>fake</td>" in row.group(1) and "enabled" in row.group(1) and "not checked yet" in row.group(1)

    backend = stored(rt)["cloud"]
    assert backend.config == {"state_dir": str(fake_dir), "region": "north"}
    assert backend.secrets and SECRET.encode() not in backend.secrets
    opened = rt.vault.open(backend.secrets)
    assert opened.pop("credential_seed")
    assert opened == {"password": SECRET, "token": f"t0k=en-{SECRET}"}
    for path in ("/admin/backends", "/admin/", "/admin/audit"):
        assert SECRET not in admin.get(path).text, path
    assert audit_rows(rt) == [("backend.add", "admin:root", "backend:cloud", "127.0.0.1")]

    again = add(admin, name="cloud", secrets=f"password={SECRET}")
    assert again.status_code == 400 and "a backend named &#39;cloud&#39; already exists" in again.text
    assert SECRET not in again.text, "the refused form does not give the secrets back"
    assert len(stored(rt)) == 1


def test_test_connection_queues_the_health_check_on_the_backends_queue(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    add(admin, config=f'{{"state_dir": "{fake_dir}"}}')
    backend = stored(rt)["cloud"]
    queue = Queue(backend.queue_name, connection=rt.redis)
    queued = admin.post("/admin/backends/cloud/check", data={"csrf_token": admin.token("/admin/backends")})
    assert "cloud: health check queued" in queued.text
    jobs = queue.get_jobs()
    assert [(j.func_name, j.args) for j in jobs] == [("broker.schedule.check_backend_job", (backend.id,))]
    assert "not checked yet" in queued.text, "the web did not call the backend itself"

    assert schedule.check_backend(rt, backend.id) is True  # what the worker runs
    row = re.search(r'<tr id="backend-cloud">(.*?)</tr>', admin.get("/admin/backends").text, re.S)
    assert row and re.search(r"available at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row.group(1))
    assert audit_rows(rt)[-1] == ("backend.check", "admin:root", "backend:cloud", "127.0.0.1")
    missing = admin.post("/admin/backends/nowhere/check", data={"csrf_token": admin.token("/admin/backends")})
    assert "nowhere: no backend named &#39;nowhere&#39;" in missing.text


def test_capacity_draining_and_prices_are_set_from_the_list(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    add(admin, config=f'{{"state_dir": "{fake_dir}"}}')

    def act(path: str, **form: str) -> str:
        return admin.post(f"/admin/backends/cloud/{path}", data={**form, "csrf_token": admin.token("/admin/backends")}).text

    assert "cloud: capacity 3." in act("capacity", capacity="3")
    assert "capacity must be a whole number" in act("capacity", capacity="-1")
    assert "cloud is draining: no new lab starts there." in act("drain", draining="1")
    assert "hourly price must be a number" in act("prices", hourly_price="cheap", suspended_hourly_price="")
    page = act("prices", hourly_price="0.40", suspended_hourly_price="0.05")
    assert "cloud: prices saved." in page and "running 0.4, suspended 0.05" in page
    row = re.search(r'<tr id="backend-cloud">(.*?)</tr>', page, re.S)
    assert row and "draining" in row.group(1) and "0 / 3" in row.group(1)
    backend = stored(rt)["cloud"]
    assert (backend.capacity, backend.draining, backend.hourly_price, backend.suspended_hourly_price) == (3, True, 0.4, 0.05)
    assert "cloud takes new labs again." in act("drain", draining="0") and not stored(rt)["cloud"].draining
    assert [a for a, *_ in audit_rows(rt)] == ["backend.add", "backend.capacity", "backend.drain", "backend.prices", "backend.undrain"]
    assert {(who, target, address) for _, who, target, address in audit_rows(rt)} == {("admin:root", "backend:cloud", "127.0.0.1")}
