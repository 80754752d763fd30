"""The learner's lab page in a real browser, streaming a desktop through the real tunnel.

Every part is real but guacd: the app over HTTP, a `labdesk worker` bringing the lab up on the fake
backend, a `labdesk tunnel` process, Debian's chromium running guacamole-common-js from npm, and, as
guacd, the test double speaking the Guacamole protocol (tests/support/guacd_double.py). The page shows
the staged progress while the lab starts, then the double's solid-colour frame in the canvas (read back
from screenshots), sends what is typed as `key` instructions, shows the reconnect banner when the
connection drops and comes back on a fresh connection; "Reset lab" asks first; idling shows a countdown,
then disconnects and tells the broker the learner left.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from redis import Redis

from broker import activity, services
from broker.lifecycle import LabState
from broker.config import Settings
from broker.models import AuditEvent
from broker.runtime import Runtime
from lti.emulator import launches
from lti.emulator.registration import register_with_tool
from tests.conftest import make_settings
from tests.e2e.png import close_to, decode
from tests.support.browser import require_browser
from tests.support.guacd_double import ConnectionRecord, GuacdDouble, encode, guacd_doubles, solid_png
from tests.support.http import LiveServer, free_port
from tests.support.inline import lab_state
from tests.support.tunnel import serve_with_tunnel
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import add_lab_catalogue, make_world
from tests.support.browser import browser  # noqa: F401  (a fixture)
from tunnel.live import watchers_key
from web.vendor import GUACAMOLE_JS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

try:
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # the tests skip without Playwright (require_browser)
    PlaywrightError = Exception  # type: ignore[assignment,misc]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RED = (200, 30, 30)
BLUE = (20, 110, 220)
FRAME = (640, 480)
PROVISION_DELAY = 3  # seconds the fake backend takes, so the progress can be seen
VIEWPORT = {"width": 1100, "height": 760}


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    """SQLite shared by the web threads, the worker and the tunnel process."""
    return sqlite_db_url


@pytest.fixture
def guacd() -> Iterator[GuacdDouble]:
    with guacd_doubles() as start:
        yield start(sync_interval=0.5, frame_color=RED, frame_size=FRAME)


@pytest.fixture
def idle_seconds() -> int:
    """The page's idle limit (overridden by the idle test)."""
    return 240


@pytest.fixture
def backend_config() -> dict[str, object]:
    """How the fake backend behaves (overridden by the failure test)."""
    return {"provision_delay": PROVISION_DELAY}


@pytest.fixture
def ports() -> dict[str, int]:
    return {"web": free_port(), "tunnel": free_port()}


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, guacd: GuacdDouble, ports: dict[str, int], idle_seconds: int) -> Settings:
    return make_settings(
        db_url, tmp_path,
        public_url=f"http://127.0.0.1:{ports['web']}",
        tunnel_listen=f"127.0.0.1:{ports['tunnel']}",
        guacd_hosts=(f"127.0.0.1:{guacd.address[1]}",),
        guacd_check_interval=1,
        page_idle_disconnect=idle_seconds,
        leave_grace=1,
        default_backend="fake",  # what activities created by LTI launches (the watch test) run on
    )


@pytest.fixture
def stack(
    rt: Runtime, settings: Settings, tmp_path: Path, workers: WorkerPool, ports: dict[str, int], backend_config: dict[str, object]
) -> Iterator[LiveServer]:
    """The lab catalogue, a worker, the tunnel and the web app over HTTP."""
    require_browser()
    require_viewer()
    make_world(rt, config={"state_dir": str(tmp_path / "fake"), **backend_config})
    yield from serve_with_tunnel(rt, settings, tmp_path, workers, ports)


@pytest.fixture
def lms_stack(rt: Runtime, settings: Settings, tmp_path: Path, workers: WorkerPool, ports: dict[str, int]) -> Iterator[LiveServer]:
    """The same stack reached through the built-in LMS emulator, whose launches carry course roles."""
    require_browser()
    require_viewer()
    add_lab_catalogue(rt, str(tmp_path / "fake"), "local-desktop")
    register_with_tool(rt)
    yield from serve_with_tunnel(rt, settings, tmp_path, workers, ports)


@pytest.fixture
def page(stack: LiveServer, browser: "Browser") -> Iterator["Page"]:
    context = browser.new_context(viewport=VIEWPORT)
    yield watched(context.new_page())
    context.close()


def watched(page: "Page") -> "Page":
    """The page, with its console and errors in the test's output (shown when the test fails)."""
    page.on("console", lambda message: print(f"console {message.type}: {message.text}"))
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    return page


# -- helpers ---------------------------------------------------------------------------------------------


def require_viewer() -> None:
    if not GUACAMOLE_JS.exists():
        pytest.skip("guacamole-common-js is not installed: run npm ci (scripts/test does)")


def open_lab(page: "Page", url: str) -> int:
    """Sign in as Ada and open the course's lab; the lab page's lab id."""
    page.goto(url)
    page.get_by_label("Your name").fill("Ada")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Open lab").click()
    page.wait_for_url(re.compile(r"/labs/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def centre_colour(page: "Page") -> tuple[int, int, int] | None:
    """The colour at the centre of the desktop's display, read from a screenshot of a few pixels there
    (None while no display is shown: the page swaps the display when a new connection paints)."""
    box = page.locator("#desktop > div").first.bounding_box(timeout=1000)
    if not box or not box["width"]:
        return None
    x, y = int(box["x"] + box["width"] / 2), int(box["y"] + box["height"] / 2)
    image = decode(page.screenshot(clip={"x": x - 2, "y": y - 2, "width": 5, "height": 5}))
    return image.pixel(image.width // 2, image.height // 2)


def wait_for_colour(page: "Page", colour: tuple[int, int, int], timeout: float = 15) -> None:
    seen: list[tuple[int, int, int] | None] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(centre_colour(page))
        except PlaywrightError:  # the display was replaced while being measured
            seen.append(None)
        if seen[-1] is not None and close_to(seen[-1], colour):
            return
        time.sleep(0.1)
    shown = page.locator("#desktop").evaluate("desktop => desktop.outerHTML.slice(0, 1500)")
    raise AssertionError(f"the desktop never showed {colour}; last colours seen {seen[-5:]}; it holds {shown}")


def session(guacd: GuacdDouble, index: int, timeout: float = 30) -> ConnectionRecord:
    """The index-th desktop session the double served (the tunnel's health checks also connect, but never
    get past `select`)."""
    guacd.wait_for(lambda: len(desktops(guacd)) > index, timeout)
    return desktops(guacd)[index]


def desktops(guacd: GuacdDouble) -> list[ConnectionRecord]:
    return [record for record in guacd.connections if record.ready]


def keys(record: ConnectionRecord) -> list[tuple[str, ...]]:
    return [args for opcode, args in record.received if opcode == "key"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def clipboard_sent(record: ConnectionRecord) -> list[str]:
    """The texts the page made the lab's clipboard: each `clipboard` stream's blobs, decoded."""
    streams = {args[0] for op, args in record.received if op == "clipboard" and args[1] == "text/plain"}
    texts: dict[str, bytes] = {}
    for op, args in record.received:
        if op == "blob" and args[0] in streams:
            texts[args[0]] = texts.get(args[0], b"") + base64.b64decode(args[1])
    return [texts[stream].decode() for stream in texts]


def left(rt: Runtime, lab_id: int) -> bool:
    """The broker heard the page say "I left" (a negative score)."""
    score = rt.redis.zscore(activity.SEEN_KEY, str(lab_id))
    return score is not None and score < 0


def desktop_connections(page: "Page") -> int:
    return int(page.locator("#desktop").get_attribute("data-connections") or 0)


# -- tests -----------------------------------------------------------------------------------------------


def test_the_desktop_appears_after_the_progress_takes_keys_and_survives_a_dropped_connection(
    rt: Runtime, stack: LiveServer, guacd: GuacdDouble, page: "Page", tmp_path: Path
) -> None:
    lab_id = open_lab(page, stack.url)
    state = lab_state(rt, lab_id)
    assert state in ("requested", "provisioning"), f"the lab was already {state}: no progress to see"
    assert page.locator("#progress-panel").is_visible()
    assert page.locator("#progress").is_visible()
    assert page.get_by_role("list", name="Start-up stages").is_visible()
    page.locator("#stages li[aria-current=step]").wait_for()
    assert page.locator("#workspace").is_hidden()
    page.screenshot(path=str(tmp_path / "progress.png"), full_page=True)

    first = session(guacd, 0)
    wait_for_colour(page, RED)
    assert page.locator("#progress-panel").is_hidden()
    assert page.locator("#progress").evaluate("bar => bar.value") == 100
    assert first.protocol == "vnc" and first.params["password"] == "fake-secret"
    width, height = (int(v) for v in next(args for op, args in first.handshake if op == "size")[:2])
    assert width > 320 and height > 240, "the page asked for the size of its desktop area"
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)
    assert "fake-secret" not in page.content()

    assert page.evaluate("document.activeElement.id") == "desktop", "the desktop takes the keyboard when it appears"
    page.keyboard.type("ab")
    guacd.wait_for(lambda: len(keys(first)) >= 4)
    assert keys(first) == [("97", "1"), ("97", "0"), ("98", "1"), ("98", "0")]

    copied = "café; ünïcode — from the lab"
    guacd.send(first.id, encode("clipboard", 7, "text/plain") + encode("blob", 7, b64(copied)) + encode("end", 7))
    page.get_by_role("button", name="Clipboard").click()
    clipboard = page.get_by_label("Clipboard text shared with the lab")
    wait_until(lambda: clipboard.input_value() == copied, timeout=5, what="the lab's clipboard in the panel")
    clipboard.fill("pasted on the page")
    guacd.wait_for(lambda: clipboard_sent(first) == ["pasted on the page"])

    def sizes() -> list[tuple[int, int]]:
        return [(int(args[0]), int(args[1])) for op, args in first.received if op == "size"]

    guacd.wait_for(lambda: any(h < height for w, h in sizes()))  # the open clipboard panel took room
    page.set_viewport_size({"width": 900, "height": 640})
    guacd.wait_for(lambda: any(w < width for w, h in sizes()))
    assert sizes()[-1][0] <= 900, f"the page sent its new size: {sizes()}"

    rt.redis.hset(watchers_key(lab_id), "watch-1", "Grace")
    page.get_by_text("Grace (instructor) is viewing your desktop.").wait_for(timeout=10000)
    rt.redis.delete(watchers_key(lab_id))
    page.locator("#watchers").wait_for(state="hidden", timeout=10000)

    guacd.png = solid_png(*FRAME, BLUE)  # the next connection paints another colour: proof of a new frame
    guacd.kill(first.id)
    banner = page.get_by_role("alert").filter(has_text="Connection lost")
    banner.wait_for(timeout=5000)
    assert re.search(r"Connection lost — reconnecting in \d+ s…", banner.inner_text())
    assert page.get_by_role("button", name="Reconnect now").is_visible()

    second = session(guacd, 1, timeout=15)
    wait_for_colour(page, BLUE)
    assert desktop_connections(page) == 2
    assert banner.is_hidden()
    page.locator("#desktop").click()
    page.keyboard.type("b")
    guacd.wait_for(lambda: len(keys(second)) >= 2)
    assert keys(second)[-2:] == [("98", "1"), ("98", "0")]
    assert lab_state(rt, lab_id) == "running"


def test_a_desktop_that_never_shows_a_frame_is_dropped_and_the_page_reconnects(
    rt: Runtime, stack: LiveServer, guacd: GuacdDouble, page: "Page"
) -> None:
    """guacd 1.6.0 sometimes answers the handshake and then says nothing (a lab VNC server it cannot reach).
    The page sends guacd nothing before a first frame, so guacd drops it after its 15-s silence rule; the
    tunnel answers the browser's pings, so only that rule ends the session. The page must then reconnect
    on its own and show the desktop."""
    guacd.silent_sessions = 1
    lab_id = open_lab(page, stack.url)
    silent = session(guacd, 0)
    page.get_by_role("alert").filter(has_text="Connection lost").wait_for(timeout=30000)
    assert silent.dropped_for_silence

    session(guacd, 1, timeout=20)
    wait_for_colour(page, RED)
    assert desktop_connections(page) == 1
    assert page.locator("#reconnect").is_hidden()
    assert lab_state(rt, lab_id) == "running"


def test_reset_lab_asks_first_then_opens_a_fresh_lab(
    rt: Runtime, stack: LiveServer, guacd: GuacdDouble, page: "Page"
) -> None:
    lab_id = open_lab(page, stack.url)
    first = session(guacd, 0)
    wait_for_colour(page, RED)

    page.get_by_role("button", name="Reset lab…").click()
    dialog = page.get_by_role("dialog", name="Reset this lab?")
    dialog.wait_for()
    assert "all work on it" in dialog.inner_text()
    dialog.get_by_role("button", name="Keep my lab").click()
    dialog.wait_for(state="hidden")
    time.sleep(0.5)
    assert page.url.endswith(f"/labs/{lab_id}") and lab_state(rt, lab_id) == "running"
    assert not first.closed

    page.get_by_role("button", name="Reset lab…").click()
    dialog.get_by_role("button", name="Reset and lose all work").click()
    page.wait_for_url(re.compile(r"/labs/(?!%d$)\d+$" % lab_id))
    fresh = int(page.url.rsplit("/", 1)[1])
    assert fresh != lab_id
    guacd.wait_for(lambda: first.closed)
    wait_until(lambda: lab_state(rt, lab_id) in ("deleting", "deleted"), timeout=10, what="the old lab to go")
    session(guacd, 1)
    wait_for_colour(page, RED)


@pytest.mark.parametrize("idle_seconds", [6])
def test_idling_shows_a_countdown_then_disconnects_and_leaves(
    rt: Runtime, stack: LiveServer, guacd: GuacdDouble, page: "Page", idle_seconds: int
) -> None:
    lab_id = open_lab(page, stack.url)
    record = session(guacd, 0)
    countdown = page.get_by_role("alertdialog", name="Are you still there?")

    countdown.wait_for(timeout=15000)  # the last 3 s of 6
    assert re.fullmatch(r"You will be disconnected in [1-3] s — move the mouse or press a key to stay\.",
                        page.locator("#idle-text").inner_text())
    box = page.locator("#desktop").bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # inside the desktop
    countdown.wait_for(state="hidden", timeout=2000)
    assert not left(rt, lab_id)

    countdown.wait_for(timeout=10000)
    page.keyboard.press("Shift")
    countdown.wait_for(state="hidden", timeout=2000)

    countdown.wait_for(timeout=10000)
    page.get_by_text(re.compile("Disconnected after 6 seconds without activity")).wait_for(timeout=10000)
    assert countdown.is_hidden()
    guacd.wait_for(lambda: record.closed)
    assert record.clean_disconnect, "the page said disconnect before closing"
    wait_until(lambda: left(rt, lab_id), timeout=10, what="the leave beacon")
    assert page.get_by_role("button", name="Reconnect now").is_visible()


@pytest.mark.parametrize("backend_config", [{"fail": {"provision": "permanent"}}])
def test_a_lab_that_cannot_start_says_so_and_what_to_do(rt: Runtime, stack: LiveServer, page: "Page") -> None:
    lab_id = open_lab(page, stack.url)
    problem = page.get_by_role("alert").filter(has_text="Your lab could not be started")
    problem.wait_for(timeout=30000)
    assert lab_state(rt, lab_id) == "failed"
    assert "contact your instructor" in problem.inner_text()
    assert page.get_by_role("button", name="Try again").is_visible()
    assert page.get_by_role("button", name="Reset lab…").is_visible()
    assert page.locator("#progress-panel").is_hidden() and page.locator("#workspace").is_hidden()


def test_an_instructor_watches_read_only_and_the_learner_is_told(
    rt: Runtime, lms_stack: LiveServer, guacd: GuacdDouble, browser: "Browser", tmp_path: Path
) -> None:
    learner = watched(browser.new_context(viewport=VIEWPORT).new_page())
    learner.goto(launches.start(rt, "emu-learner-1"))
    learner.wait_for_url(re.compile(r"/labs/\d+$"))
    lab_id = int(learner.url.rsplit("/", 1)[1])
    own = session(guacd, 0)
    wait_for_colour(learner, RED)

    teacher = watched(browser.new_context(viewport=VIEWPORT).new_page())
    teacher.goto(launches.start(rt, "emu-instructor-1"))
    teacher.locator(f'a[href="/teach/labs/{lab_id}/watch"]').click()
    teacher.wait_for_url(re.compile(rf"/teach/labs/{lab_id}/watch$"))
    assert teacher.get_by_text(re.compile(r"^\s*Watching .+ \(read-only\)")).is_visible()
    joined = session(guacd, 1)
    assert joined.joined and joined.id == own.id, "the instructor joined the learner's own session"
    wait_for_colour(teacher, RED)
    for absent in ("Reset lab…", "Disconnect", "Clipboard"):
        assert teacher.get_by_role("button", name=absent).count() == 0

    teacher.locator("#desktop").click()
    teacher.keyboard.type("zz")
    time.sleep(0.5)
    assert keys(joined) == [] and not [op for op, _ in joined.received if op == "mouse"], "a watcher sends no input"

    notice = learner.locator("#watchers")
    notice.wait_for(timeout=10000)
    assert re.fullmatch(r".+ \(instructor\) is viewing your desktop\.", notice.inner_text())
    teacher.screenshot(path=str(tmp_path / "watching.png"))
    learner.screenshot(path=str(tmp_path / "watched.png"))
    with rt.session() as db:
        assert [e.action for e in db.query(AuditEvent).filter_by(lab_id=lab_id)] == ["watch.start"]

    teacher.close()
    notice.wait_for(state="hidden", timeout=15000)


def test_a_suspended_lab_lets_go_of_the_desktop_offers_resume_and_comes_back(
    rt: Runtime, stack: LiveServer, guacd: GuacdDouble, page: "Page"
) -> None:
    lab_id = open_lab(page, stack.url)
    first = session(guacd, 0)
    wait_for_colour(page, RED)

    services.request_state(rt, lab_id, LabState.SUSPENDING, actor="test", reason="the idle sweep")
    resume = page.get_by_role("button", name="Resume my lab")
    resume.wait_for(timeout=20000)
    guacd.wait_for(lambda: first.closed)
    assert first.clean_disconnect, "the page said disconnect when the lab went away"
    assert page.locator("#workspace").is_hidden() and page.locator("#reconnect").is_hidden()
    assert lab_state(rt, lab_id) == "suspended"

    resume.click()
    page.wait_for_url(f"{stack.url}/labs/{lab_id}")
    session(guacd, 1)
    wait_for_colour(page, RED)
    assert lab_state(rt, lab_id) == "running"


RDP_AND_VNC = [
    {"protocol": "rdp", "host": "10.1.1.1", "port": 3389, "username": "lab", "password": "pw-rdp"},
    {"protocol": "vnc", "host": "10.1.1.2", "port": 5901, "password": "pw-vnc", "name": "server"},
]


@pytest.mark.parametrize("backend_config", [{"endpoints": RDP_AND_VNC}])
def test_machines_keyboard_layouts_and_full_screen(rt: Runtime, stack: LiveServer, guacd: GuacdDouble, page: "Page") -> None:
    open_lab(page, stack.url)
    first = session(guacd, 0)
    wait_for_colour(page, RED)
    assert first.protocol == "rdp" and first.params["server-layout"] == "en-us-qwerty"  # the browser's language
    machine = page.get_by_label("Machine")
    assert [o.strip() for o in machine.locator("option").all_inner_texts()] == ["main (RDP)", "server (VNC)"]

    page.get_by_label("Keyboard layout").select_option("de-de-qwertz")
    second = session(guacd, 1)
    assert second.params["server-layout"] == "de-de-qwertz"
    assert first.clean_disconnect, "the old connection was closed properly"
    assert page.evaluate("localStorage.getItem('labdesk.keyboard-layout')") == "de-de-qwertz"
    wait_for_colour(page, RED)

    machine.select_option("server")
    third = session(guacd, 2)
    assert third.protocol == "vnc" and third.params["password"] == "pw-vnc"
    page.get_by_label("Keyboard layout").wait_for(state="hidden")  # only RDP desktops use it
    wait_for_colour(page, RED)

    page.get_by_role("button", name="Full screen").click()
    page.wait_for_function("document.fullscreenElement && document.fullscreenElement.id === 'workspace'")
    exit_button = page.get_by_role("button", name="Exit full screen")
    assert exit_button.get_attribute("aria-pressed") == "true"
    exit_button.click()
    page.wait_for_function("document.fullscreenElement === null")
    for secret in ("10.1.1.1", "pw-rdp", "pw-vnc", "3389"):
        assert secret not in page.content()
