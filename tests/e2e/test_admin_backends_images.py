"""In Debian's chromium (Playwright): an admin signs in, adds a backend through the form (a config error
first, shown on the form), sees it listed, then imports the site's catalogue and sees its images with
their versions. Screenshots are kept in the test's directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from sqlalchemy import select

from app import create_app
from broker import admins, images
from broker.models import Backend
from broker.runtime import Runtime
from tests.support.http import LiveServer, serve
from tests.support.browser import browser  # noqa: F401  (a fixture)
from tests.support.e2e_stack import db_url  # noqa: F401  (a fixture: SQLite)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery staple"
SECRET = "s3cret-from-the-browser"


@pytest.fixture
def console(rt: Runtime) -> Iterator[LiveServer]:
    with rt.session() as db:
        admins.create_local(db, "root", PASSWORD)
        db.commit()
    yield from serve(create_app(rt.settings, rt))


def test_an_admin_adds_a_backend_and_imports_the_catalogue(
    console: LiveServer, browser: "Browser", rt: Runtime, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(console.url + "/admin/backends")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Backends", exact=True).wait_for()
    assert page.url == console.url + "/admin/backends"

    page.get_by_label("Name").fill("lab-cloud")
    page.get_by_label("Kind").select_option("vagrant")
    page.get_by_label("Config (JSON object, no secrets)").fill('{"bogus": 1}')
    page.get_by_label("Secrets (one KEY=VALUE a line; stored encrypted, never shown again)").fill(f"password={SECRET}")
    page.get_by_role("button", name="Add backend").click()
    page.get_by_role("alert").filter(has_text="bogus: unknown key").wait_for()
    page.screenshot(path=str(tmp_path / "admin-backend-refused.png"), full_page=True)
    with rt.session() as db:
        assert db.scalars(select(Backend)).all() == []

    page.get_by_label("Kind").select_option("fake")
    page.get_by_label("Config (JSON object, no secrets)").fill(json.dumps({"state_dir": str(tmp_path / "fake")}))
    page.get_by_label("Secrets (one KEY=VALUE a line; stored encrypted, never shown again)").fill(f"password={SECRET}")
    page.get_by_role("button", name="Add backend").click()
    page.get_by_role("status").filter(has_text="Backend lab-cloud (fake) added").wait_for()
    row = page.locator("#backend-lab-cloud")
    assert "fake" in row.inner_text() and "enabled" in row.inner_text() and "not checked yet" in row.inner_text()
    assert SECRET not in page.content()
    page.screenshot(path=str(tmp_path / "admin-backend-added.png"), full_page=True)

    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Images").click()
    page.get_by_role("heading", name="Images", exact=True).wait_for()
    page.get_by_role("button", name="Import catalogue").click()
    page.get_by_role("status").filter(has_text="Imported").wait_for()
    shipped = sorted(path.stem for path in images.SHIPPED.glob("*.toml"))
    status = page.get_by_role("status").inner_text()
    assert status.count("added") == len(shipped)
    catalogue = page.get_by_role("region", name="Catalogue")
    for slug in (entry["id"] for entry in images.list_images(rt)):
        assert catalogue.locator(f"#image-{slug}-v1").count() == 1, slug
    page.screenshot(path=str(tmp_path / "admin-images-imported.png"), full_page=True)

    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Backends").click()
    assert "lab-cloud" in page.locator("#backend-lab-cloud").inner_text()
