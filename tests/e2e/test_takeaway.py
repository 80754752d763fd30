""""Take this lab home" end to end: a learner in the LMS emulator presses the button on a real lab and saves
a zip holding the lab's Vagrantfile and their own work.

Every part is real but guacd (the double of tests/support/guacd_double.py paints the desktop area): the
LMS emulator's course page framing LabDesk, the app over HTTP, a `labdesk worker` process bringing up a
real Xvfb + x11vnc desktop with the `local` connector and reading the work folder through the `local`
grading hook, a `labdesk tunnel` process, and Debian's chromium. The lab image is the shipped
`local-desktop` catalogue entry, imported as `labdesk images import` does, with a `[backends.vagrant]`
section added to its stored spec (the shipped entry has none; the local connector keeps the lab in a
directory of its own, so the work folder is named once the lab runs).

Screenshots are saved in the test's tmp_path: takeaway-offered.png, takeaway-ready.png.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from sqlalchemy import select

from broker import images
from broker.config import Settings
from broker.models import Backend, Image, Lab, LabExport
from broker.runtime import Runtime
from connectors.local.connector import LocalConnector
from lti.emulator.registration import register_with_tool
from tests.e2e.test_check_my_work import PAGE_ERRORS, RUNNING, VIEWPORT, lab_frame, require_viewer, watched
from tests.support.browser import require_browser, require_desktop
from tests.support.e2e_stack import db_url, guacd, ports, settings  # noqa: F401 - fixtures
from tests.support.http import LiveServer
from tests.support.tunnel import serve_with_tunnel
from tests.support.workers import WorkerPool
from tests.takeaway_support import TEMPLATE
from tests.support.browser import browser  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser, pytest.mark.desktop, pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[2] / "desktop-images"


def set_work_folder(rt: Runtime, folder: str) -> None:
    """The entry's [backends.vagrant], with `folder` as the work folder, in the stored spec."""
    with rt.session() as db:
        image = db.scalar(select(Image).where(Image.slug == "local-desktop"))
        spec: dict[str, Any] = dict(image.spec)
        spec["backends"] = {**spec["backends"], "vagrant": {
            "box": "labdesk/debian-lab-desktop", "vagrantfile": "vagrant/Vagrantfile.tpl", "template": TEMPLATE,
            "box_url": "https://boxes.example.edu/debian-lab-desktop.box", "work_folder": folder}}
        image.spec = spec
        db.commit()


@pytest.fixture
def catalogue(rt: Runtime, tmp_path: Path) -> Iterator[None]:
    """The local backend and the shipped entry (imported for real, plus a Vagrant box); every desktop is
    ended afterwards."""
    require_browser()
    require_desktop()
    require_viewer()
    state_dir = tmp_path / "desktops"
    with rt.session() as db:
        db.add(Backend(name="local", kind="local", config={"state_dir": str(state_dir)}))
        db.commit()
    root = tmp_path / "catalogue-root"
    (root / "catalogue").mkdir(parents=True)
    (root / "checks").mkdir()
    (root / "checks" / "hello-file.sh").write_text((SHIPPED / "checks" / "hello-file.sh").read_text())
    entry = root / "catalogue" / "local-desktop.toml"
    entry.write_text((SHIPPED / "catalogue" / "local-desktop.toml").read_text())
    images.import_entries(rt, [entry])
    set_work_folder(rt, "/not/yet/known")
    register_with_tool(rt)
    yield
    connector = LocalConnector("cleanup", {"state_dir": str(state_dir)})
    for managed in connector.list_managed():
        connector.delete(managed.handle)


@pytest.fixture
def stack(rt: Runtime, settings: Settings, catalogue: None, workers: WorkerPool, ports: dict[str, int], tmp_path: Path) -> Iterator[LiveServer]:
    yield from serve_with_tunnel(rt, settings, tmp_path, workers, ports)


def test_a_learner_takes_their_lab_home_with_their_work(rt: Runtime, stack: LiveServer, browser: "Browser", tmp_path: Path) -> None:
    PAGE_ERRORS.clear()
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = watched(context.new_page())
    page.goto(f"{stack.url}/emulator/")
    page.get_by_role("button", name="Launch as learner (Ada Lovelace)").first.click()
    frame = lab_frame(page, stack.url)
    lab_id = int(frame.url.rsplit("/", 1)[1])
    frame.get_by_text(RUNNING, exact=True).wait_for(timeout=60000)

    # The learner's work, in the lab's work folder (the local lab's directory is its HOME).
    with rt.session() as db:
        lab_dir = Path(db.get(Lab, lab_id).handle["dir"])
    work = lab_dir / "work"
    (work / "project").mkdir(parents=True)
    (work / "project" / "answer.txt").write_text("my answer\n")
    set_work_folder(rt, str(work))

    button = frame.get_by_role("button", name="Take this lab home")
    button.wait_for()
    assert frame.locator("#takeaway-panel").is_hidden(), "nothing taken away yet: no panel"
    page.screenshot(path=str(tmp_path / "takeaway-offered.png"), full_page=True)

    button.click()
    link = frame.get_by_role("link", name="Download your lab")
    link.wait_for(timeout=60000)
    status = frame.locator("#takeaway-status").inner_text()
    assert status.startswith("Your lab is ready to take home (") and status.endswith(").") , status
    assert button.is_enabled(), "the button is offered again once the bundle is ready"
    page.screenshot(path=str(tmp_path / "takeaway-ready.png"), full_page=True)

    with page.expect_download() as saving:
        link.click()
    download = saving.value
    assert download.suggested_filename == "labdesk-local-desktop.zip"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(saved) as bundle:
        names = bundle.namelist()
        assert "labdesk-local-desktop/Vagrantfile" in names and "labdesk-local-desktop/README.md" in names
        vagrantfile = bundle.read("labdesk-local-desktop/Vagrantfile").decode()
        assert "config.vm.box = 'labdesk/debian-lab-desktop'" in vagrantfile and "hosted = false" in vagrantfile
        assert "config.trigger.after :up" in vagrantfile
        with tarfile.open(fileobj=io.BytesIO(bundle.read("labdesk-local-desktop/work.tar.gz")), mode="r:gz") as archive:
            assert archive.extractfile("./project/answer.txt").read() == b"my answer\n"  # type: ignore[union-attr]

    # Opened again, the lab page offers the bundle at once.
    again = watched(context.new_page())
    again.goto(f"{stack.url}/labs/{lab_id}")
    again.get_by_role("link", name="Download your lab").wait_for(timeout=10000)
    again.close()
    with rt.session() as db:
        assert [e.state for e in db.scalars(select(LabExport).where(LabExport.lab_id == lab_id))] == ["ready"]
    context.close()
    assert PAGE_ERRORS == [], "no script error on any page"
