"""LabDesk inside an LMS iframe, as browsers that block third-party cookies see it.

The built-in emulator is the LMS at `https://localhost:PORT/emulator/`; LabDesk is `https://127.0.0.1:PORT`
— another site. Both are served over HTTPS by the real app with a certificate from a throwaway CA, and
Debian's chromium runs with third-party cookies blocked. The learner launch must still sign the learner in
(LabDesk's cookies are Partitioned), and the instructor's deep-linking flow must end with a new activity in
the LMS.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from redis import Redis
from sqlalchemy import select

from app import create_app
from broker.config import Settings
from broker.models import Lab
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.browser import ARGS, CHROMIUM, require_browser
from tests.support.world import add_lab_catalogue
from tests.support.http import LiveServer, serve
from tests.support.tls import TestCA, make_ca

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Frame, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestCA:
    made = make_ca(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(made.ca_file))  # server-to-server calls (JWKS, tokens) trust it
    return made


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    return make_settings(
        db_url, tmp_path, public_url=f"https://127.0.0.1:{port}", emulator_url=f"https://localhost:{port}/emulator",
        default_backend="fake", emulator=True,
    )


@pytest.fixture
def site(rt: Runtime, port: int, ca: TestCA, tmp_path: Path) -> Iterator[LiveServer]:
    add_lab_catalogue(rt, str(tmp_path / "fake"), "local-desktop")
    yield from serve(create_app(rt.settings, rt), port, ssl_context=(str(ca.cert_file), str(ca.key_file)))


@pytest.fixture
def browser(ca: TestCA) -> Iterator["Browser"]:
    require_browser()
    from playwright.sync_api import sync_playwright

    args = [*ARGS, "--test-third-party-cookie-phaseout", f"--ignore-certificate-errors-spki-list={ca.spki_sha256}"]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def tool_frame(page: "Page", port: int, path: str) -> "Frame":
    """The iframe once it shows a LabDesk page whose URL contains `path`."""
    prefix = f"https://127.0.0.1:{port}"
    return settle(page, lambda: next((f for f in page.frames if f.url.startswith(prefix) and path in f.url), None), f"LabDesk {path} in the iframe")


def text_of(frame: "Frame") -> str:
    """A frame's HTML, or nothing while it is between two pages (Playwright refuses to read it then)."""
    from playwright.sync_api import Error

    try:
        return frame.content()
    except Error:
        return ""


def settle(page: "Page", probe, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Poll `probe` while letting Playwright process the browser's events (time.sleep would not)."""
    for _ in range(int(timeout * 10)):
        found = probe()
        if found:
            return found
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_learner_launch_inside_a_cross_site_iframe(site: LiveServer, browser: "Browser", port: int, rt: Runtime) -> None:
    page = browser.new_page()
    page.goto(f"https://localhost:{port}/emulator/")
    page.get_by_role("button", name="Launch as learner (Ada Lovelace)").first.click()
    frame = tool_frame(page, port, "/labs/")
    frame.wait_for_selector("#lab")
    assert "Demo desktop lab" in frame.content()
    cookies = page.context.cookies(f"https://127.0.0.1:{port}")
    session_cookie = next(c for c in cookies if c["name"] == "session")
    assert session_cookie["sameSite"] == "None" and session_cookie["secure"]
    assert session_cookie.get("partitionKey") == "https://localhost"  # kept per LMS site (CHIPS)
    with rt.session() as db:
        assert db.scalar(select(Lab.state)) == "requested"


def test_instructor_deep_linking_inside_a_cross_site_iframe(site: LiveServer, browser: "Browser", port: int) -> None:
    page = browser.new_page()
    page.goto(f"https://localhost:{port}/emulator/")
    page.get_by_role("button", name="Add a LabDesk activity").first.click()
    frame = tool_frame(page, port, "/lti/deep-link/")
    frame.get_by_text("Linux desktop").first.click()
    frame.get_by_role("button", name="Add").first.click()
    lms = f"https://localhost:{port}/emulator/"
    settle(page, lambda: any(f.url.startswith(lms) and "Linux desktop" in text_of(f) for f in page.frames[1:]), "the LMS confirms the new activity")
    page.goto(f"https://localhost:{port}/emulator/")
    assert page.locator(".activity", has_text="Linux desktop").count() >= 1
