"""The console's Images section over real HTTP: admins only (and CSRF); importing the site's catalogue shows
what each entry became and is idempotent (a re-import leaves every version unchanged, a changed entry
becomes a new version beside the one activities use); a bad catalogue imports nothing and lists every
problem with its file and key; each import is audited."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import select

from broker import images
from broker.models import AuditEvent, Image
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.support.world import World
from tests.support.admin_browser import Browser, signed_in_root
from tests.web.test_admin_backends import form_token


@pytest.fixture
def catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped catalogue as the site's catalogue, so a test may change it."""
    tree = tmp_path / "desktop-images"  # entries name files beside the catalogue (templates, checks)
    shutil.copytree(images.SHIPPED.parent, tree, ignore=shutil.ignore_patterns("*.qcow2", "*.box", "*.img"))
    monkeypatch.setattr(images, "SHIPPED", tree / "catalogue")
    return tree / "catalogue"


@pytest.fixture
def admin(rt: Runtime, server: LiveServer) -> Browser:
    return signed_in_root(rt, server.url)


def import_catalogue(browser: Browser) -> tuple[int, str]:
    page = browser.post("/admin/images/import", data={"csrf_token": browser.token("/admin/images")})
    return page.status_code, page.text


def results(page: str) -> dict[str, tuple[str, str]]:
    """The import's table: image id -> (result, version)."""
    status = page.split('<div role="status">')[1].split("</div>")[0]
    return {m[0]: (m[1], m[2]) for m in re.findall(r"<tr><td>([\w.-]+)</td><td>(\w+)</td><td>(\d+)</td>", status)}


def audited(rt: Runtime) -> list[tuple[str, str, str, str]]:
    with rt.session() as db:
        return [(e.action, e.actor, e.target, e.detail) for e in
                db.scalars(select(AuditEvent).where(AuditEvent.action.startswith("images.")).order_by(AuditEvent.id))]


def test_images_need_an_admin_and_the_csrf_token(rt: Runtime, server: LiveServer, learner: Callable[[str], Learner],
                                                 admin: Browser, catalogue: Path) -> None:
    nobody = Browser(server.url)
    page = nobody.get("/admin/images", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].startswith("/admin/login?next=/admin/images")
    for person in (nobody, learner("Ada")):
        refused = person.post("/admin/images/import", data={"csrf_token": form_token(person)}, allow_redirects=False)
        assert refused.status_code == 403 and "Admins only" in refused.text
    no_token = admin.post("/admin/images/import")
    assert no_token.status_code == 400 and "This form has expired" in no_token.text
    with rt.session() as db:
        assert db.scalars(select(Image)).all() == []
    assert audited(rt) == []


def test_importing_the_catalogue_is_idempotent_and_versioned(rt: Runtime, admin: Browser, catalogue: Path) -> None:
    entries = sorted(p.stem for p in catalogue.glob("*.toml"))
    status, first = import_catalogue(admin)
    assert status == 200
    assert set(results(first).values()) == {("added", "1")} and len(results(first)) == len(entries)
    listed = admin.get("/admin/images").text
    assert all(f'id="image-{slug}-v1"' in listed for slug in results(first)), "every image is listed at version 1"

    status, again = import_catalogue(admin)
    assert status == 200 and set(results(again).values()) == {("unchanged", "1")}

    changed = sorted(catalogue.glob("*.toml"))[0]
    changed.write_text(re.sub(r'(?m)^title = "(.*)"', r'title = "\1 (revised)"', changed.read_text(), count=1))
    status, third = import_catalogue(admin)
    updated = {slug for slug, (what, _) in results(third).items() if what == "updated"}
    assert status == 200 and len(updated) == 1 and results(third)[updated.pop()] == ("updated", "2")
    with rt.session() as db:
        assert db.query(Image).count() == len(entries) + 1
    assert [(a, who, target) for a, who, target, _ in audited(rt)] == [("images.import", "admin:root", "catalogue")] * 3
    assert audited(rt)[1][3].endswith(f"0 added, 0 updated, {len(entries)} unchanged")


def test_a_bad_catalogue_imports_nothing_and_names_each_file_and_key(rt: Runtime, admin: Browser, catalogue: Path) -> None:
    first = sorted(catalogue.glob("*.toml"))[0]
    first.write_text(first.read_text().replace("protocol = ", "protocol_typo = ", 1))
    (catalogue / "broken.toml").write_text("id = [\n")
    status, page = import_catalogue(admin)
    assert status == 400
    alert = page.split('<div role="alert" class="error">')[1].split("</div>")[0]
    assert "Nothing was imported" in alert
    problems = re.findall(r"<li><code>(.*?)</code></li>", alert)
    assert any(p.startswith(f"{first.name}: ") or f"/{first.name}: " in p for p in problems), problems
    assert any("protocol" in p for p in problems) and any("broken.toml" in p for p in problems), problems
    with rt.session() as db:
        assert db.scalars(select(Image)).all() == []
    assert [a for a, *_ in audited(rt)] == ["images.import_refused"]


def test_the_list_shows_which_activities_use_which_version(rt: Runtime, admin: Browser, world: World) -> None:
    with rt.session() as db:
        db.add(Image(slug="img-fake", version=2, title="Test image", protocol="vnc", spec={}, digest="f" * 64))
        db.commit()
    page = admin.get("/admin/images").text
    v1 = re.search(r'<tr id="image-img-fake-v1">(.*?)</tr>', page, re.S)
    v2 = re.search(r'<tr id="image-img-fake-v2">(.*?)</tr>', page, re.S)
    assert v1 and "<td>1: Test lab (Test course)</td>" in v1.group(1)
    assert v2 and "(newest)" in v2.group(1) and "<td>0</td>" in v2.group(1)
