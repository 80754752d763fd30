"""Debian's chromium driven by Playwright, for the end-to-end tests (a browser is never downloaded).

Tests that use it skip with the reason when chromium, Playwright or the desktop programs are missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test installs it)")
    pytest.importorskip("playwright.sync_api", reason="the Python playwright package is not installed")


def require_desktop() -> None:
    for program in ("Xvfb", "x11vnc"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed: apt-get install xvfb x11vnc (scripts/test installs them)")


def chromium() -> Iterator["Browser"]:
    """A headless chromium for the duration of a fixture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser() -> Iterator["Browser"]:
    """A headless chromium for one test (skips without one; CI fails instead). Import it into a test module."""
    require_browser()
    yield from chromium()
