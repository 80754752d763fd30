"""An admin signs in to the console in Debian's chromium (Playwright) and sees the dashboard, then the
audit log with their own sign-in. Screenshots are kept in the test's directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from app import create_app
from broker import admins, services
from broker.models import Backend
from broker.runtime import Runtime
from tests.support.http import LiveServer, serve
from tests.support.world import World
from tests.support.admin_browser import PASSWORD
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser]



@pytest.fixture
def console(rt: Runtime, world: World) -> Iterator[LiveServer]:
    """A draining backend with one requested lab, a local admin, the app over HTTP."""
    with rt.session() as db:
        admins.create_local(db, "root", PASSWORD)
        db.get(Backend, world.backend_id).draining = True
        db.commit()
    services.launch(rt, world.user_id, world.activity_id, actor="test")
    yield from serve(create_app(rt.settings, rt))


def test_an_admin_signs_in_with_a_password_and_sees_the_dashboard(console: LiveServer, browser: "Browser", tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(console.url + "/admin/")
    assert page.url.startswith(console.url + "/admin/login?next=")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").filter(has_text="Wrong username or password.").wait_for()
    page.screenshot(path=str(tmp_path / "admin-sign-in-refused.png"), full_page=True)

    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="LabDesk admin").wait_for()
    assert page.url == console.url + "/admin/"
    labs = page.get_by_role("region", name="Labs by state")
    assert labs.get_by_role("row", name="requested 1").count() == 1
    assert page.get_by_role("region", name="Backends").get_by_role("row", name="fake fake draining").count() == 1
    assert page.get_by_text("Signed in as root").is_visible()
    page.screenshot(path=str(tmp_path / "admin-dashboard.png"), full_page=True)

    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Audit log").click()
    page.get_by_role("heading", name="Audit log").wait_for()
    rows = page.get_by_role("row")
    assert "admin.sign_in" in rows.nth(1).inner_text() and "admin:root" in rows.nth(1).inner_text()
    assert "admin.sign_in_failed" in rows.nth(2).inner_text()
    page.screenshot(path=str(tmp_path / "admin-audit.png"), full_page=True)

    page.get_by_role("button", name="Sign out").click()
    page.get_by_text("You are signed out.").wait_for()
    page.goto(console.url + "/admin/audit")
    assert page.url.startswith(console.url + "/admin/login")
