"""In Debian's chromium (Playwright): an admin signs in, adds an LMS platform by hand (a bad issuer first,
refused beside its field with what was typed kept), edits it, then creates a Dynamic Registration
invitation, sees its URL and copies it with the Copy button. Screenshots are kept in the test's directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from broker.runtime import Runtime
from lti import invites, platforms
from tests.support.http import LiveServer
from tests.support.admin_browser import PASSWORD, console  # noqa: F401  (a fixture: console)
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser]

LMS = "https://moodle.example.edu"


def fill(page: "Page", **values: str) -> None:
    for label, value in values.items():
        page.get_by_label(label.replace("_", " "), exact=True).fill(value)


def test_an_admin_adds_and_edits_a_platform_and_invites_an_lms(
    console: LiveServer, browser: "Browser", rt: Runtime, tmp_path: Path
) -> None:
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url)
    page = context.new_page()
    page.goto(console.url + "/admin/platforms")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="LMS platforms", exact=True).wait_for()
    assert page.url == console.url + "/admin/platforms"

    fill(page, Name="Example Moodle", Issuer="moodle.example.edu", Client_ID="kAq1bC2d",
         Auth_login_URL=LMS + "/mod/lti/auth.php", Token_URL=LMS + "/mod/lti/token.php", Key_set_URL=LMS + "/mod/lti/certs.php")
    page.get_by_label("Deployment IDs").fill("3")
    page.get_by_role("button", name="Add platform").click()
    page.get_by_role("alert").filter(has_text="Issuer must be an http(s) URL with a host, got 'moodle.example.edu'").wait_for()
    assert page.get_by_label("Client ID", exact=True).input_value() == "kAq1bC2d", "what was typed is kept"
    assert page.get_by_label("Issuer", exact=True).get_attribute("aria-invalid") == "true"
    page.screenshot(path=str(tmp_path / "admin-platform-refused.png"), full_page=True)
    assert platforms.listing(rt) == []

    page.get_by_label("Issuer", exact=True).fill(LMS)
    page.get_by_role("button", name="Add platform").click()
    page.get_by_role("status").filter(has_text="Platform Example Moodle added").wait_for()
    [info] = platforms.listing(rt)
    row = page.locator(f"#platform-{info.id}").inner_text()
    assert LMS in row and "kAq1bC2d" in row and "3" in row and "no launches yet" in row
    page.screenshot(path=str(tmp_path / "admin-platform-added.png"), full_page=True)

    page.get_by_role("link", name="Edit Example Moodle").click()
    page.get_by_role("heading", name="Platform Example Moodle").wait_for()
    fill(page, Key_set_URL=LMS + "/mod/lti/certs.php?v=2", Name="Moodle (production)")
    page.get_by_label("Accept new deployments").check()
    page.get_by_role("button", name="Save platform").click()
    page.get_by_role("status").filter(has_text="Platform Moodle (production) saved.").wait_for()
    page.get_by_label("New deployment ID").fill("7")
    page.get_by_role("button", name="Add deployment").click()
    page.get_by_role("status").filter(has_text="Deployment 7 of Moodle (production) may launch LabDesk now.").wait_for()
    page.screenshot(path=str(tmp_path / "admin-platform-edited.png"), full_page=True)
    edited = platforms.by_id(rt, info.id)
    assert (edited.name, edited.key_set_url, edited.accept_new_deployments, edited.deployments) == (
        "Moodle (production)", LMS + "/mod/lti/certs.php?v=2", True, ("3", "7"))

    page.get_by_role("link", name="← All platforms").click()
    page.get_by_role("button", name="Create a registration invitation").click()
    url_field = page.get_by_label("Dynamic Registration URL")
    url_field.wait_for()
    url = url_field.input_value()
    assert url.startswith(rt.settings.public_url.rstrip("/") + "/lti/register?invite=")
    assert invites.valid(rt, url.rsplit("=", 1)[1])
    assert "UTC" in page.locator("#invite-expires").inner_text()
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == url
    page.screenshot(path=str(tmp_path / "admin-platform-invite.png"), full_page=True)
    context.close()
