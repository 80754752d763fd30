""""Check my work" end to end: a learner in the LMS emulator checks a real lab, and the score reaches the
emulator's gradebook.

Every part is real but guacd (the double of tests/support/guacd_double.py paints the desktop area): the
LMS emulator's course page framing LabDesk (OIDC login and signed launch), the app over HTTP, a
`labdesk worker` process bringing up a real Xvfb + x11vnc desktop with the `local` connector and running
the checks through the `local` grading hook, a `labdesk tunnel` process, and Debian's chromium. The lab
image is the shipped `local-desktop` catalogue entry, imported as `labdesk images import` does (with a
hint for its check when the entry has none). The grade goes out through the AGS outbox, delivered by the
worker to the emulator.

Screenshots are saved in the test's tmp_path: lab-running.png, check-failed.png, check-passed.png,
latest-on-load.png, instructor-view.png, gradebook.png (and exam-mode.png). An instructor watching the lab sees its latest
check too.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from sqlalchemy import select

from broker import images
from broker.attempt_views import GRADEBOOK
from broker.config import Settings
from broker.models import Backend, CheckAttempt, Image, Lab
from broker.runtime import Runtime
from connectors.local.connector import LocalConnector
from lti.emulator.registration import register_with_tool
from tests.support.browser import require_browser, require_desktop
from tests.support.e2e_stack import db_url, guacd, ports, settings  # noqa: F401 - fixtures
from tests.support.http import LiveServer
from tests.support.tunnel import serve_with_tunnel
from tests.support.workers import WorkerPool
from tests.support.browser import browser  # noqa: F401  (a fixture)
from web.vendor import GUACAMOLE_JS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Frame, Page

pytestmark = [pytest.mark.browser, pytest.mark.desktop, pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[2] / "desktop-images"
HINT = "Open the terminal in your lab and type: echo hi > ~/hello.txt"
VIEWPORT = {"width": 1200, "height": 1000}
RUNNING = "Your lab is running."


def catalogue_copy(tmp_path: Path) -> tuple[Path, str]:
    """The shipped `local-desktop` entry and its check script in a catalogue folder of the test's, with a
    hint added to the check if the entry has none; the entry file and the hint the learner should read."""
    root = tmp_path / "catalogue-root"
    (root / "catalogue").mkdir(parents=True)
    shutil.copytree(SHIPPED / "checks", root / "checks")
    text = (SHIPPED / "catalogue" / "local-desktop.toml").read_text()
    checks = text[text.index("[[checks]]"):]
    if "hint" not in checks:
        text = text.replace('run = "checks/hello-file.sh"', f'run = "checks/hello-file.sh"\nhint = "{HINT}"')
    entry = root / "catalogue" / "local-desktop.toml"
    entry.write_text(text)
    hint = re.search(r'^hint\s*=\s*"(.*)"\s*$', text[text.index("[[checks]]"):], re.M)
    assert hint, "the test entry's check has a hint"
    return entry, hint.group(1)


@pytest.fixture
def hint(rt: Runtime, tmp_path: Path) -> Iterator[str]:
    """The local backend and the catalogue entry (imported for real); every desktop is ended afterwards."""
    require_browser()
    require_desktop()
    require_viewer()
    state_dir = tmp_path / "desktops"
    with rt.session() as db:
        db.add(Backend(name="local", kind="local", config={"state_dir": str(state_dir)}))
        db.commit()
    entry, text = catalogue_copy(tmp_path)
    images.import_entries(rt, [entry])
    with rt.session() as db:
        spec = db.scalar(select(Image.spec).where(Image.slug == "local-desktop"))
    assert [c["id"] for c in spec["checks"]] == ["hello-file"] and spec["checks"][0]["hint"] == text
    register_with_tool(rt)
    yield text
    connector = LocalConnector("cleanup", {"state_dir": str(state_dir)})
    for managed in connector.list_managed():
        connector.delete(managed.handle)


@pytest.fixture
def stack(
    rt: Runtime, settings: Settings, hint: str, workers: WorkerPool, ports: dict[str, int], tmp_path: Path
) -> Iterator[LiveServer]:
    """A worker on every queue, the tunnel and the web app (with its emulator) over HTTP."""
    yield from serve_with_tunnel(rt, settings, tmp_path, workers, ports)


# -- helpers ---------------------------------------------------------------------------------------------


def require_viewer() -> None:
    if not GUACAMOLE_JS.exists():
        pytest.skip("guacamole-common-js is not installed: run npm ci (scripts/test does)")


PAGE_ERRORS: list[str] = []


def watched(page: "Page") -> "Page":
    """The page, with its console in the test's output and its script errors in PAGE_ERRORS."""
    page.on("console", lambda message: print(f"console {message.type}: {message.text}"))
    page.on("pageerror", lambda error: PAGE_ERRORS.append(f"{page.url}: {error}"))
    return page


def lab_frame(page: "Page", base: str) -> "Frame":
    """The emulator's iframe once it shows LabDesk's lab page."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.url.startswith(base) and re.search(r"/labs/\d+$", frame.url):
                return frame
        page.wait_for_timeout(100)
    raise AssertionError(f"the iframe never showed a lab page: {[f.url for f in page.frames]}")


def record_statuses(frame: "Frame") -> None:
    """Keep every text the check's live region takes (the polling may pass some within a second)."""
    frame.evaluate("""() => {
        window.checkStatuses = [];
        const status = document.getElementById("check-status");
        new MutationObserver(() => window.checkStatuses.push(status.textContent))
            .observe(status, { childList: true, characterData: true, subtree: true });
    }""")


def statuses(frame: "Frame") -> list[str]:
    return frame.evaluate("() => window.checkStatuses")


def lab_dir(rt: Runtime, lab_id: int) -> Path:
    """The local connector's directory of the lab: the lab desktop's HOME."""
    with rt.session() as db:
        return Path(db.get(Lab, lab_id).handle["dir"])


def gradebook_cell(page: "Page", base: str, sub: str, want: str, timeout: float = 60) -> str:
    """The gradebook's cell for `sub`, reloaded until it matches `want` (the worker delivers the score)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        page.goto(f"{base}/emulator/")
        page.get_by_role("link", name="Gradebook").click()
        page.locator("#gradebook").wait_for()
        text = page.locator(f'tr[data-user="{sub}"] td').nth(1).inner_text()
        if re.search(want, text):
            return text
        time.sleep(1)
    raise AssertionError(f"the gradebook never showed {want!r} for {sub}; it shows {text!r}")


# -- the test --------------------------------------------------------------------------------------------


def test_a_learner_checks_their_work_sees_the_hint_then_the_score_in_the_gradebook(
    rt: Runtime, stack: LiveServer, hint: str, browser: "Browser", tmp_path: Path
) -> None:
    PAGE_ERRORS.clear()
    context = browser.new_context(viewport=VIEWPORT)
    page = watched(context.new_page())
    page.goto(f"{stack.url}/emulator/")
    page.get_by_role("button", name="Launch as learner (Ada Lovelace)").first.click()
    frame = lab_frame(page, stack.url)
    lab_id = int(frame.url.rsplit("/", 1)[1])
    frame.get_by_text(RUNNING, exact=True).wait_for(timeout=60000)
    button = frame.get_by_role("button", name="Check my work")
    button.wait_for()
    page.wait_for_timeout(300)
    assert button.is_enabled() and frame.locator("#check-panel").is_hidden(), "no attempt yet: no results"
    page.screenshot(path=str(tmp_path / "lab-running.png"), full_page=True)

    # The first check: ~/hello.txt does not exist yet.
    record_statuses(frame)
    button.click()
    status = frame.get_by_role("status").filter(has_text="check passed")
    status.wait_for(timeout=30000)
    assert frame.locator("#check-status").inner_text() == "0 of 1 check passed."
    assert "Score: 0 of 10" in status.inner_text(), "the live region reads the score too"
    seen = statuses(frame)
    assert any(s.startswith(("Waiting for the check to start", "Checking 1 of 1")) for s in seen), f"no progress was shown: {seen}"
    failed = frame.locator("#check-list li").first
    assert "check-failed" in (failed.get_attribute("class") or "")
    assert failed.locator(".check-icon").inner_text() == "✗"
    assert failed.locator(".check-title").inner_text() == "Create ~/hello.txt"
    assert failed.locator(".check-feedback").inner_text() == "~/hello.txt is missing or empty."
    assert failed.locator(".check-hint").inner_text() == f"Hint: {hint}"
    assert frame.locator("#check-score").inner_text() == "Score: 0 of 10"
    assert button.is_enabled(), "the button is offered again once the attempt is done"
    page.screenshot(path=str(tmp_path / "check-failed.png"), full_page=True)

    # The learner does the task. The guacd double cannot carry keystrokes to the real desktop, so the file
    # is written straight into the lab's HOME (the local connector's lab directory), as typing
    # `echo hi > ~/hello.txt` in its terminal would have.
    (lab_dir(rt, lab_id) / "hello.txt").write_text("hi\n")
    button.click()
    passed_status = frame.get_by_role("status").filter(has_text="1 of 1 check passed")
    passed_status.wait_for(timeout=30000)
    assert frame.locator("#check-status").inner_text() == "1 of 1 check passed."
    passed = frame.locator("#check-list li").first
    assert "check-passed" in (passed.get_attribute("class") or "")
    assert passed.locator(".check-icon").inner_text() == "✓"
    assert passed.locator(".check-feedback").inner_text() == "Found ~/hello.txt."
    assert passed.locator(".check-hint").count() == 0, "no hint for a passed check"
    assert frame.locator("#check-score").inner_text() == "Score: 10 of 10"
    page.screenshot(path=str(tmp_path / "check-passed.png"), full_page=True)

    # Opened again, the lab page shows the latest attempt at once.
    again = watched(context.new_page())
    again.set_viewport_size({"width": 1100, "height": 800})
    again.goto(f"{stack.url}/labs/{lab_id}")
    again.get_by_role("status").filter(has_text="1 of 1 check passed").wait_for(timeout=10000)
    again.screenshot(path=str(tmp_path / "latest-on-load.png"), full_page=True)
    again.close()

    with rt.session() as db:
        attempts = db.scalars(select(CheckAttempt).where(CheckAttempt.lab_id == lab_id).order_by(CheckAttempt.id)).all()
        assert [(a.state, a.trigger, a.score_given) for a in attempts] == [("done", "learner", 0), ("done", "learner", 10)]

    # The instructor sees Ada's score and both attempts.
    teacher = watched(browser.new_context(viewport=VIEWPORT).new_page())
    teacher.goto(f"{stack.url}/emulator/")
    teacher.get_by_role("button", name="Launch as instructor (Grace Hopper)").first.click()
    view = next_frame(teacher, stack.url, "/teach/activities/")
    row = view.locator("table.scores tbody tr").filter(has=view.get_by_role("rowheader", name="Ada Lovelace"))
    row.wait_for(timeout=20000)
    assert "10 of 10" in row.inner_text() and "2 attempts" in row.inner_text()
    row.get_by_text("2 attempts").click()
    teacher.screenshot(path=str(tmp_path / "instructor-view.png"), full_page=True)
    view.get_by_role("link", name="Watch Ada Lovelace's desktop (read-only)").click()
    watching = next_frame(teacher, stack.url, f"/teach/labs/{lab_id}/watch")
    watching.get_by_role("status").filter(has_text="1 of 1 check passed").wait_for(timeout=10000)
    assert watching.get_by_role("heading", name="Latest check of this lab").is_visible()
    assert watching.get_by_role("button", name="Check my work").count() == 0, "a watcher cannot start a check"
    teacher.context.close()

    # The score is in the emulated LMS's gradebook.
    cell = gradebook_cell(page, stack.url, "emu-learner-1", r"\b10/10\b")
    assert "Completed" in cell and "FullyGraded" in cell
    page.screenshot(path=str(tmp_path / "gradebook.png"), full_page=True)
    # …and the lab page says so under the score (docs/grading.md).
    back = watched(context.new_page())
    back.goto(f"{stack.url}/labs/{lab_id}")
    back.locator("#check-gradebook").filter(has_text=GRADEBOOK["sent"]).wait_for(timeout=10000)
    context.close()
    assert PAGE_ERRORS == [], "no script error on any page"


def next_frame(page: "Page", base: str, path: str) -> "Frame":
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.url.startswith(base) and path in frame.url:
                return frame
        page.wait_for_timeout(100)
    raise AssertionError(f"the iframe never showed {path}: {[f.url for f in page.frames]}")


def test_in_exam_mode_the_learner_sees_that_the_work_was_checked_but_no_result(
    rt: Runtime, stack: LiveServer, browser: "Browser", tmp_path: Path
) -> None:
    PAGE_ERRORS.clear()
    context = browser.new_context(viewport=VIEWPORT)
    page = watched(context.new_page())
    page.goto(f"{stack.url}/emulator/")
    page.get_by_role("button", name="Launch as learner (Alan Turing)").first.click()
    frame = lab_frame(page, stack.url)
    lab_id = int(frame.url.rsplit("/", 1)[1])
    frame.get_by_text(RUNNING, exact=True).wait_for(timeout=60000)
    with rt.session() as db:
        db.get(Lab, lab_id).activity.hide_results_until = datetime(2099, 1, 2, 15, 30)
        db.commit()

    frame.get_by_role("button", name="Check my work").click()
    status = frame.get_by_role("status").filter(has_text="Results are hidden until")
    status.wait_for(timeout=30000)
    text = frame.locator("#check-status").inner_text()
    assert text.startswith("Your work was checked and saved. Results are hidden until ") and "2099" in text, text
    item = frame.locator("#check-list li").first
    assert item.locator(".check-title").inner_text() == "Create ~/hello.txt"
    assert "check-hidden" in (item.get_attribute("class") or "")
    for absent in (".check-feedback", ".check-hint"):
        assert item.locator(absent).count() == 0, absent
    assert frame.locator("#check-score").is_hidden(), "no score in exam mode"
    assert "✗" not in frame.locator("#check-panel").inner_text() and "✓" not in frame.locator("#check-panel").inner_text()
    page.screenshot(path=str(tmp_path / "exam-mode.png"), full_page=True)
    frame.get_by_role("button", name="Hide results").click()
    toggle = frame.locator("#check-toggle")
    assert frame.locator("#check-list").is_hidden() and toggle.get_attribute("aria-expanded") == "false"
    assert toggle.inner_text() == "Show results" and frame.locator("#check-status").is_visible(), "the summary stays"
    with rt.session() as db:
        attempt = db.scalar(select(CheckAttempt).where(CheckAttempt.lab_id == lab_id))
        assert attempt.state == "done" and attempt.score_given == 0, "the attempt was scored all the same"
    context.close()
    assert PAGE_ERRORS == [], "no script error on any page"
