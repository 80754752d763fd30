"""In Debian's chromium (Playwright): an admin signs in, adds a backend through the form (a config error
first, shown on the form), sees it listed, then imports the site's catalogue and sees its images with
their versions; and an admin edits a backend (a refused config first, shown by the field, then a new
config and a replaced secret) and disables it. Screenshots are kept in the test's directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from broker import backend_registry, images
from broker.models import Backend
from broker.runtime import Runtime
from tests.support.http import LiveServer
from tests.support.admin_browser import PASSWORD, console  # noqa: F401  (a fixture: console)
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser]

SECRET = "s3cret-from-the-browser"


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


KEYSTONE = {"auth_url": "https://keystone.example.edu:5000/v3", "username": "labdesk", "project_name": "labs"}


def test_an_admin_edits_a_backend_then_disables_it(console: LiveServer, browser: "Browser", rt: Runtime, tmp_path: Path) -> None:
    backend_registry.register(rt, "campus", "heat", {**KEYSTONE, "capacity": 10}, {"password": SECRET}, actor="cli:test")
    page = browser.new_page()
    page.goto(console.url + "/admin/backends")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Actions on campus").click()
    page.get_by_role("link", name="Edit campus (config and secrets)").click()
    page.get_by_role("heading", name="Edit backend campus").wait_for()
    secrets = page.get_by_role("group", name="Secrets (stored encrypted, never shown)")
    assert secrets.get_by_role("rowheader").all_inner_texts() == ["credential_seed", "password"]
    assert SECRET not in page.content()

    config = page.get_by_label("Config (JSON object, no secrets)")
    typed = json.dumps({**KEYSTONE, "interface": "nope"})
    config.fill(typed)
    page.get_by_label("New value for password").fill("typed-then-refused")
    page.get_by_role("button", name="Save campus").click()
    page.get_by_role("alert").filter(has_text="interface: expected one of public, internal, admin").wait_for()
    assert page.get_by_label("Config (JSON object, no secrets)").input_value() == typed, "what was typed stays"
    assert page.get_by_label("New value for password").input_value() == "", "a typed secret is not sent back"
    assert page.locator("#config-error").inner_text().endswith("got 'nope'")
    page.screenshot(path=str(tmp_path / "admin-backend-edit-refused.png"), full_page=True)

    page.get_by_label("Config (JSON object, no secrets)").fill(json.dumps({**KEYSTONE, "capacity": 20}))
    page.get_by_label("New value for password").fill("rotated-password")
    page.get_by_role("button", name="Save campus").click()
    page.get_by_role("status").filter(has_text="campus saved (config keys changed: capacity; secrets replaced: password)").wait_for()
    assert "rotated-password" not in page.content()
    with rt.session() as db:
        stored = db.scalars(select(Backend).where(Backend.name == "campus")).one()
        assert stored.config["capacity"] == 20 and rt.vault.open(stored.secrets)["password"] == "rotated-password"

    page.get_by_text("Actions on campus").click()
    page.get_by_role("button", name="Disable campus").click()
    page.get_by_role("status").filter(has_text="campus is disabled: no new labs and no launches there").wait_for()
    assert "disabled" in page.locator("#backend-campus").inner_text()
    page.screenshot(path=str(tmp_path / "admin-backend-disabled.png"), full_page=True)
    with rt.session() as db:
        assert db.scalars(select(Backend.enabled).where(Backend.name == "campus")).one() is False
