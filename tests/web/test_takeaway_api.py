"""The "Take this lab home" API over real HTTP: who may start an export and download the zip (the owner;
an instructor of the course may read and download, not start; anyone else gets a 404), CSRF, the
refusals, the download's headers, and the lab page's button shown only for labs with a Vagrant box.

People arrive as an LMS sends them, through the built-in emulator's signed launches. Labs run on the fake
backend, whose work folder is read for real through the `local` grading hook in a directory the test
owns; queued jobs run in this process (tests/support/inline.py).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
import requests
from sqlalchemy import select

from broker.models import Image, Lab, LabExport
from broker.runtime import Runtime
from tests.support.http import LiveServer
from tests.support.inline import run_queued_jobs
from tests.support.lms_browser import get, Person, running_lab, serve_with_emulator, settings  # noqa: F401  (fixtures: settings)
from tests.takeaway_support import VAGRANT, vagrant_spec

pytestmark = pytest.mark.slow

NOT_YOURS = {"error": "This lab does not exist or is not yours."}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Where the fake backend's scripts run: the learner's "lab", whose work folder is home/work."""
    path = tmp_path / "lab-home"
    path.mkdir()
    return path


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path, home: Path) -> Iterator[LiveServer]:
    """The emulator and LabDesk; the demo link's image has a Vagrant box and a work folder."""
    spec = vagrant_spec(tmp_path, vagrant=VAGRANT.replace('"/home/learner/work"', f'"{home / "work"}"'))
    for server in serve_with_emulator(rt, port, tmp_path, check_home=str(home)):
        set_spec(rt, spec)
        yield server


def set_spec(rt: Runtime, spec: dict[str, object]) -> None:
    with rt.session() as db:
        db.scalar(select(Image).where(Image.slug == "local-desktop")).spec = spec
        db.commit()


def take_away(person: Person, lab_id: int) -> requests.Response:
    return person.post(f"/api/labs/{lab_id}/take-away", f"/labs/{lab_id}", json={})


def test_the_owner_takes_the_lab_home_with_their_work(lms: LiveServer, rt: Runtime, home: Path) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    (home / "work").mkdir()
    (home / "work" / "answer.txt").write_text("42\n")
    page = get(ada, f"/labs/{lab_id}").text
    assert 'id="takeaway-start"' in page and "Take this lab home" in page and "lab-takeaway.js" in page
    assert get(ada, f"/api/labs/{lab_id}/take-away").status_code == 404, "nothing taken away yet"

    started = take_away(ada, lab_id)
    assert started.status_code == 202, started.text
    export = started.json()["export"]
    assert export["state"] == "pending" and export["download_url"] is None and export["lab_id"] == lab_id
    assert take_away(ada, lab_id).json()["export"]["id"] == export["id"], "a second press follows the same export"
    assert get(ada, f"/labs/{lab_id}/take-away.zip").status_code == 404, "nothing to download yet"

    run_queued_jobs(rt)
    ready = get(ada, f"/api/labs/{lab_id}/take-away").json()
    assert (ready["id"], ready["state"], ready["message"]) == (export["id"], "ready", "")
    assert ready["download_url"] == f"/labs/{lab_id}/take-away.zip" and ready["size"] > 0

    download = get(ada, ready["download_url"])
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/zip"
    assert download.headers["Content-Disposition"] == 'attachment; filename="labdesk-net-lab.zip"'
    assert "no-store" in download.headers["Cache-Control"]
    assert len(download.content) == ready["size"]
    with zipfile.ZipFile(io.BytesIO(download.content)) as bundle:
        assert "labdesk-net-lab/Vagrantfile" in bundle.namelist()
        with tarfile.open(fileobj=io.BytesIO(bundle.read("labdesk-net-lab/work.tar.gz")), mode="r:gz") as work:
            assert work.extractfile("./answer.txt").read() == b"42\n"  # type: ignore[union-attr]


def test_only_the_owner_starts_an_export_and_only_with_the_csrf_token(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    alan, _ = running_lab(rt, "emu-learner-2")
    grace = Person(rt, "emu-instructor-1")
    no_token = ada.http.post(f"{ada.base}/api/labs/{lab_id}/take-away", json={}, timeout=10)
    assert no_token.status_code == 400 and "expired" in no_token.json()["advice"]
    stranger = alan.post(f"/api/labs/{lab_id}/take-away", "/", json={})
    assert stranger.status_code == 404 and stranger.json() == NOT_YOURS
    assert grace.post(f"/api/labs/{lab_id}/take-away", "/", json={}).status_code == 404, "an instructor does not start one"
    assert ada.post("/api/labs/999999/take-away", f"/labs/{lab_id}", json={}).status_code == 404
    with rt.session() as db:
        assert db.scalar(select(LabExport.id)) is None, "no refused request started an export"
    signed_out = requests.post(f"{ada.base}/api/labs/{lab_id}/take-away", timeout=10)
    assert signed_out.status_code in (400, 401)
    assert requests.get(f"{ada.base}/api/labs/{lab_id}/take-away", timeout=10).status_code == 401


def test_the_owner_and_the_course_instructors_read_and_download_and_nobody_else(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    alan, _ = running_lab(rt, "emu-learner-2")
    grace = Person(rt, "emu-instructor-1")
    assert take_away(ada, lab_id).status_code == 202
    run_queued_jobs(rt)

    for person in (ada, grace):
        assert get(person, f"/api/labs/{lab_id}/take-away").json()["state"] == "ready"
        download = get(person, f"/labs/{lab_id}/take-away.zip")
        assert download.status_code == 200 and download.content.startswith(b"PK")
    for path in (f"/api/labs/{lab_id}/take-away", f"/labs/{lab_id}/take-away.zip", "/labs/999999/take-away.zip"):
        refused = get(alan, path)
        assert refused.status_code == 404 and not refused.content.startswith(b"PK"), path
    assert get(alan, f"/api/labs/{lab_id}/take-away").json() == NOT_YOURS


def test_refusals_say_what_to_do(lms: LiveServer, rt: Runtime, tmp_path: Path) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    with rt.session() as db:
        db.get(Lab, lab_id).state = "suspended"
        db.commit()
    closed = take_away(ada, lab_id)
    assert closed.status_code == 409
    assert closed.json() == {"error": "Open your lab first: your work folder is read from the running lab."}

    set_spec(rt, {"id": "plain", "title": "Plain", "backends": {"heat": {"template": "t.yaml"}}})
    none = take_away(ada, lab_id)
    assert none.status_code == 400
    assert none.json() == {"error": "This lab cannot be taken away: its course offers no Vagrant box."}
    assert 'id="takeaway-start"' not in get(ada, f"/labs/{lab_id}").text, "no button without a Vagrant box"


def test_a_failed_export_tells_the_learner_why(lms: LiveServer, rt: Runtime, home: Path) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    rt.settings = __import__("dataclasses").replace(rt.settings, takeaway_work_limit_mb=1)
    (home / "work").mkdir()
    (home / "work" / "big.bin").write_bytes(__import__("os").urandom(1024 * 1024))
    assert take_away(ada, lab_id).status_code == 202
    run_queued_jobs(rt)
    failed = get(ada, f"/api/labs/{lab_id}/take-away").json()
    assert failed["state"] == "failed" and failed["download_url"] is None
    assert "too big to take away" in failed["message"] and "1 MiB limit" in failed["message"]
    assert get(ada, f"/labs/{lab_id}/take-away.zip").status_code == 404
