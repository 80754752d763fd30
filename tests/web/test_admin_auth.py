"""The admin console's doors, over real HTTP: sign-in by password, the rate limit, CSRF on every POST, session
rotation and lifetimes, no-store pages, and learners' and instructors' sessions kept out."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from redis import Redis
from sqlalchemy import select

from broker import admins, audit
from broker.config import Settings
from broker.models import AuditEvent
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.admin_browser import PASSWORD, Browser
from tests.support.http import Learner, LiveServer
from tests.support.inline import Clock
from tests.support.lms_browser import Person, lms_settings, serve_with_emulator

PAGES = ("/admin/", "/admin/audit")


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(db_url, tmp_path, admin_login_window=2)


@pytest.fixture
def root(rt: Runtime) -> str:
    with rt.session() as db:
        admins.create_local(db, "root", PASSWORD)
        db.commit()
    return "root"


def audited(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.session() as db:
        return [(e.action, e.actor, e.address) for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_admin_pages_require_sign_in(server: LiveServer) -> None:
    nobody = Browser(server.url)
    for path in PAGES:
        page = nobody.get(path, allow_redirects=False)
        assert page.status_code == 302 and page.headers["Location"].startswith("/admin/login?next=")
    as_json = nobody.get("/admin/", headers={"Accept": "application/json"}, allow_redirects=False)
    assert as_json.status_code == 403 and as_json.json()["error"] == "Admins only"
    logout = nobody.post("/admin/logout", data={"csrf_token": nobody.token()}, allow_redirects=False)
    assert logout.status_code == 403 and "Admins only" in logout.text


def test_a_password_sign_in_rotates_the_session_and_returns_where_it_was_going(rt: Runtime, server: LiveServer, root: str) -> None:
    browser = Browser(server.url)
    old_token = browser.token()
    landed = browser.admin_sign_in(root, PASSWORD, next="/admin/audit")
    assert landed.status_code == 200 and landed.url == server.url + "/admin/audit"
    assert "Signed in as <strong>root</strong>" in landed.text
    assert browser.post("/admin/logout", data={"csrf_token": old_token}).status_code == 400, "the pre-sign-in token died with the old session"
    assert audited(rt) == [("admin.sign_in", "admin:root", "127.0.0.1")]

    dashboard = browser.get("/admin/")
    assert dashboard.headers["Cache-Control"] == "no-store"
    assert "Labs by state" in dashboard.text and 'href="/admin/audit"' in dashboard.text
    nav = dashboard.text.split('aria-label="Admin console"')[1].split("</nav>")[0]
    assert [label for label in ("Platforms", "Backends", "Images", "guacd", "Labs", "Jobs", "Usage") if label not in nav] == []

    elsewhere = Browser(server.url).admin_sign_in(root, PASSWORD, next="https://evil.example/")
    assert elsewhere.url == server.url + "/admin/", "never sent to another site after sign-in"


def test_a_wrong_password_is_refused_with_a_clear_message_and_audited(rt: Runtime, server: LiveServer, root: str) -> None:
    browser = Browser(server.url)
    for username, password in ((root, "not the password"), ("nobody", PASSWORD)):
        refused = browser.admin_sign_in(username, password)
        assert refused.status_code == 401
        assert '<p class="error" role="alert">Wrong username or password.</p>' in refused.text
    assert audited(rt) == [("admin.sign_in_failed", "anonymous", "127.0.0.1")] * 2
    with rt.session() as db:
        assert [e.target for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))] == ["admin:root", "admin:nobody"]
    assert browser.get("/admin/", allow_redirects=False).status_code == 302


def test_failed_sign_ins_are_limited_per_username_and_address(rt: Runtime, server: LiveServer, root: str) -> None:
    browser = Browser(server.url)
    for _ in range(rt.settings.admin_login_attempts):
        assert browser.admin_sign_in(root, "wrong").status_code == 401
    locked = browser.admin_sign_in(root, PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed sign-ins for this username. Try again in 1 minute." in locked.text
    assert browser.get("/admin/", allow_redirects=False).status_code == 302, "even the right password waits"
    assert browser.admin_sign_in("someone-else", "wrong").status_code == 401, "other usernames are not locked"
    time.sleep(rt.settings.admin_login_window + 0.5)
    assert browser.admin_sign_in(root, PASSWORD).url == server.url + "/admin/"


def test_csrf_is_enforced_on_sign_in_and_sign_out(rt: Runtime, server: LiveServer, root: str) -> None:
    browser = Browser(server.url)
    browser.token()
    no_token = browser.post("/admin/login", data={"username": root, "password": PASSWORD})
    assert no_token.status_code == 400 and "This form has expired" in no_token.text
    assert browser.get("/admin/", allow_redirects=False).status_code == 302
    browser.admin_sign_in(root, PASSWORD)
    assert browser.post("/admin/logout", data={}).status_code == 400
    assert browser.post("/admin/logout", data={"csrf_token": "forged"}).status_code == 400
    assert browser.get("/admin/").status_code == 200, "still signed in after the refused posts"
    out = browser.post("/admin/logout", data={"csrf_token": browser.token("/admin/")})
    assert out.url.startswith(server.url + "/admin/login") and "You are signed out." in out.text
    assert browser.get("/admin/", allow_redirects=False).status_code == 302
    assert [a for a, _, _ in audited(rt)] == ["admin.sign_in", "admin.sign_out"]


def test_an_idle_session_ends_and_so_does_a_long_one(server: LiveServer, root: str, clock: Clock) -> None:
    browser = Browser(server.url)
    browser.admin_sign_in(root, PASSWORD)
    clock.advance(3500)
    assert browser.get("/admin/").status_code == 200, "within the idle limit; this request renews it"
    clock.advance(3601)
    expired = browser.get("/admin/")
    assert expired.url.startswith(server.url + "/admin/login") and "Your admin session has ended." in expired.text

    browser.admin_sign_in(root, PASSWORD)
    for _ in range(9):  # active all day: a request every 50 minutes, 7.5 hours ...
        clock.advance(3000)
        assert browser.get("/admin/", allow_redirects=False).status_code == 200
    clock.advance(3000)  # ... still ends once 8 hours have passed
    assert browser.get("/admin/", allow_redirects=False).status_code == 302


def test_a_disabled_admin_cannot_sign_in_and_their_open_session_ends(rt: Runtime, server: LiveServer, root: str) -> None:
    browser = Browser(server.url)
    browser.admin_sign_in(root, PASSWORD)
    with rt.session() as db:
        admins.disable(db, root)
        db.commit()
    assert browser.get("/admin/", allow_redirects=False).status_code == 302
    refused = Browser(server.url).admin_sign_in(root, PASSWORD)
    assert refused.status_code == 401 and "Wrong username or password." in refused.text


def test_a_learners_dev_session_never_reaches_admin_pages(server: LiveServer, learner: Callable[[str], Learner]) -> None:
    ada = learner("Ada")
    for path in PAGES:
        assert ada.get(path, allow_redirects=False).headers["Location"].startswith("/admin/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', ada.get("/admin/login").text).group(1)  # type: ignore[union-attr]
    refused = ada.post("/admin/logout", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "Signed in as Ada." in ada.get("/").text, "the learner's own session is untouched"


def test_the_audit_log_is_newest_first_paged_and_filtered(rt: Runtime, server: LiveServer, root: str) -> None:
    with rt.session() as db:
        for n in range(60):
            audit.record(db, f"admin:{'alice' if n % 2 else 'bob'}", "backend.drain" if n % 3 else "lab.suspend",
                         target=f"backend:b{n}")
        db.commit()
    browser = Browser(server.url)
    browser.admin_sign_in(root, PASSWORD)
    first = browser.get("/admin/audit").text
    targets = re.findall(r"<td>backend:b(\d+)</td>", first)
    assert targets[:3] == ["59", "58", "57"] and len(targets) == 49, "50 rows a page, the sign-in is the newest"
    assert 'rel="next"' in first
    second = browser.get("/admin/audit?page=2").text
    assert re.findall(r"<td>backend:b(\d+)</td>", second) == ["10", "9", "8", "7", "6", "5", "4", "3", "2", "1", "0"]
    assert 'rel="next"' not in second and 'rel="prev"' in second
    alice = browser.get("/admin/audit", params={"actor": "admin:alice", "action": "lab."}).text
    assert re.findall(r"<td>backend:b(\d+)</td>", alice) == [str(n) for n in range(57, 0, -1) if n % 2 and n % 3 == 0]


class TestFromAnLmsLaunch:
    """Instructors and learners who arrived by an LTI launch from the emulator."""

    @pytest.fixture
    def settings(self, db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
        return lms_settings(db_url, tmp_path, port)

    @pytest.fixture
    def lms(self, rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
        yield from serve_with_emulator(rt, port, tmp_path)

    @pytest.mark.parametrize("sub", ["emu-instructor-1", "emu-learner-1"])
    def test_an_lti_session_never_reaches_admin_pages(self, lms: LiveServer, rt: Runtime, sub: str) -> None:
        person = Person(rt, sub)
        for path in PAGES:
            page = person.http.get(person.base + path, allow_redirects=False, timeout=10)
            assert page.status_code == 302 and page.headers["Location"].startswith("/admin/login")
        api = person.http.get(person.base + "/admin/", headers={"Accept": "application/json"}, timeout=10, allow_redirects=False)
        assert api.status_code == 403
        assert person.post("/admin/logout", "/").status_code == 403
