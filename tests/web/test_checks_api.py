"""The "Check my work" API over real HTTP: who may start a check and read an attempt, what each of them
reads (exam mode included), the refusals, and the instructor's pages of scores and attempts.

People arrive as an LMS sends them, through the built-in emulator's signed launches. Labs run on the fake
backend, whose checks run for real through the `local` grading hook in a directory the test owns (the
lab's "home"); queued jobs (the lab's start, the attempt, the grade's delivery to the emulator) run in
this process (tests/support/inline.py).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
import requests
from sqlalchemy import select

from broker.clock import utcnow
from broker.models import CheckAttempt, Image, Lab, ScoreOutbox
from broker.runtime import Runtime
from lti.emulator import site, store
from tests.support.http import LiveServer
from tests.support.inline import run_queued_jobs
from tests.support.lms_browser import get, Person, running_lab, serve_with_emulator, settings  # noqa: F401  (fixtures: settings)

pytestmark = pytest.mark.slow

NOT_RUNNING = "Your lab must be running to check your work."
HINT = "Open the terminal and type: echo hi > ~/hello.txt"
HELLO = """#!/bin/sh
if [ -s "$HOME/hello.txt" ]; then echo "Found ~/hello.txt."; else echo "~/hello.txt is missing or empty."; exit 1; fi
"""
SPEC = {
    "lab_user": {"name": "learner"},
    "hosts": [{"name": "main", "ports": [{"protocol": "vnc", "port": 5900}]}],
    "checks": [
        {"id": "hello-file", "title": "Create ~/hello.txt", "weight": 3, "host": "main", "hint": HINT, "timeout": 10,
         "args": ["learner"], "script": HELLO},
        {"id": "lab-open", "title": "Open the lab", "weight": 1, "host": "main", "timeout": 10, "args": ["learner"],
         "script": "#!/bin/sh\necho The lab is open.\n"},
    ],
    "max_score": 10,
}
LEARNER_VIEW = {"id", "lab_id", "state", "finished", "trigger", "created_at", "finished_at", "error",
                "results_hidden_until", "score_given", "score_maximum", "passed", "total", "checks", "url", "gradebook"}
CHECK_FIELDS = {"id", "title", "state", "feedback", "hint", "seconds"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Where the fake backend's checks run (their HOME): the learner's "lab"."""
    path = tmp_path / "lab-home"
    path.mkdir()
    return path


@pytest.fixture
def lms(rt: Runtime, port: int, tmp_path: Path, home: Path) -> Iterator[LiveServer]:
    """The emulator and LabDesk; the demo link's image has two checks (weights 3 and 1, scaled to 10)."""
    for server in serve_with_emulator(rt, port, tmp_path, check_home=str(home)):
        with rt.session() as db:
            db.scalar(select(Image).where(Image.slug == "local-desktop")).spec = SPEC
            db.commit()
        yield server


def check(person: Person, lab_id: int):  # type: ignore[no-untyped-def]
    return person.post(f"/api/labs/{lab_id}/check", f"/labs/{lab_id}", json={})


def set_activity(rt: Runtime, lab_id: int, **values: object) -> int:
    with rt.session() as db:
        activity = db.get(Lab, lab_id).activity
        for key, value in values.items():
            setattr(activity, key, value)
        db.commit()
        return activity.id


def test_the_owner_checks_their_running_lab_and_follows_the_attempt(lms: LiveServer, rt: Runtime, home: Path) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    status = get(ada, f"/api/labs/{lab_id}").json()
    assert status["checks"] == 2, "the lab page learns that there is something to check"
    assert get(ada, f"/api/labs/{lab_id}/attempts/latest").status_code == 404

    started = check(ada, lab_id)
    assert started.status_code == 202, started.text
    attempt = started.json()["attempt"]
    assert set(attempt) == LEARNER_VIEW
    assert attempt["state"] == "queued" and attempt["trigger"] == "learner" and attempt["lab_id"] == lab_id
    assert attempt["url"] == f"/api/attempts/{attempt['id']}"
    assert [(c["id"], c["title"], c["state"]) for c in attempt["checks"]] == [
        ("hello-file", "Create ~/hello.txt", "pending"), ("lab-open", "Open the lab", "pending")]
    again = check(ada, lab_id)
    assert again.status_code == 202 and again.json()["attempt"]["id"] == attempt["id"], "a second press follows the same attempt"

    run_queued_jobs(rt)
    done = get(ada, attempt["url"]).json()
    assert set(done) == LEARNER_VIEW
    assert done["state"] == "done" and done["finished"] and done["finished_at"].endswith("Z")
    assert (done["score_given"], done["score_maximum"], done["passed"], done["total"]) == (2.5, 10, 1, 2)
    failed, passed = done["checks"]
    assert CHECK_FIELDS <= set(failed)
    assert (failed["state"], failed["feedback"], failed["hint"]) == ("failed", "~/hello.txt is missing or empty.", HINT)
    assert (passed["state"], passed["feedback"], passed["hint"]) == ("passed", "The lab is open.", "")
    assert get(ada, f"/api/labs/{lab_id}/attempts/latest").json()["id"] == attempt["id"]

    (home / "hello.txt").write_text("hi\n")  # the learner's work
    second = check(ada, lab_id).json()["attempt"]
    assert second["id"] != attempt["id"]
    run_queued_jobs(rt)
    latest = get(ada, f"/api/labs/{lab_id}/attempts/latest").json()
    assert latest["id"] == second["id"] and latest["state"] == "done"
    assert (latest["score_given"], latest["passed"]) == (10, 2)
    assert [c["state"] for c in latest["checks"]] == ["passed", "passed"]
    with rt.session() as db:
        sent = [row.payload["scoreGiven"] for row in db.scalars(select(ScoreOutbox).order_by(ScoreOutbox.id))]
    assert sent == [2.5, 10], "each new score went to the gradebook"
    gradebook = store.latest_scores(rt, site.COURSE_ID, store.SEED_LINE_ITEM_ID)
    assert gradebook["emu-learner-1"]["scoreGiven"] == 10 and gradebook["emu-learner-1"]["activityProgress"] == "Completed"


def test_only_the_owner_may_start_a_check_and_only_with_the_csrf_token(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    alan, _ = running_lab(rt, "emu-learner-2")
    grace = Person(rt, "emu-instructor-1")
    no_token = ada.http.post(f"{ada.base}/api/labs/{lab_id}/check", json={}, timeout=10)
    assert no_token.status_code == 400 and "expired" in no_token.json()["advice"]
    stranger = alan.post(f"/api/labs/{lab_id}/check", "/", json={})
    assert stranger.status_code == 404 and stranger.json() == {"error": "This lab does not exist or is not yours."}
    assert grace.post(f"/api/labs/{lab_id}/check", "/", json={}).status_code == 404, "an instructor does not press it for a learner"
    assert ada.post("/api/labs/999999/check", f"/labs/{lab_id}", json={}).status_code == 404
    with rt.session() as db:
        assert db.scalar(select(CheckAttempt.id)) is None, "no refused request started an attempt"
    assert requests.get(f"{ada.base}/api/labs/{lab_id}/attempts/latest", timeout=10).status_code == 401, "signed out"


def test_a_lab_that_is_not_running_or_has_no_checks_says_why(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    with rt.session() as db:
        db.get(Lab, lab_id).state = "suspended"
        db.commit()
    refused = check(ada, lab_id)
    assert refused.status_code == 409 and refused.json() == {"error": NOT_RUNNING}
    with rt.session() as db:
        db.get(Lab, lab_id).state = "running"
        db.scalar(select(Image).where(Image.slug == "local-desktop")).spec = {}
        db.commit()
    assert get(ada, f"/api/labs/{lab_id}").json()["checks"] == 0, "the lab page then shows no button"
    nothing = check(ada, lab_id)
    assert nothing.status_code == 400 and "nothing to check" in nothing.json()["error"]


def test_the_owner_and_the_course_instructors_read_an_attempt_and_nobody_else(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    alan, _ = running_lab(rt, "emu-learner-2")
    grace = Person(rt, "emu-instructor-1")
    attempt_id = check(ada, lab_id).json()["attempt"]["id"]
    run_queued_jobs(rt)
    for person in (ada, grace):
        assert get(person, f"/api/attempts/{attempt_id}").json()["id"] == attempt_id
        assert get(person, f"/api/labs/{lab_id}/attempts/latest").json()["id"] == attempt_id
    for path in (f"/api/attempts/{attempt_id}", f"/api/labs/{lab_id}/attempts/latest", "/api/attempts/999999"):
        refused = get(alan, path)
        assert refused.status_code == 404 and refused.json()["error"], path
    assert get(ada, "/api/attempts/999999").status_code == 404
    assert get(alan, f"/teach/attempts/{attempt_id}").status_code == 404, "a learner has no instructor pages"


def test_exam_mode_hides_results_from_the_learner_but_not_from_the_instructor(lms: LiveServer, rt: Runtime) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    grace = Person(rt, "emu-instructor-1")
    until = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    set_activity(rt, lab_id, hide_results_until=until)
    started = check(ada, lab_id).json()["attempt"]
    assert started["results_hidden_until"] == until.isoformat() + "Z"
    run_queued_jobs(rt)

    learner = get(ada, started["url"]).json()
    assert learner["state"] == "done" and learner["results_hidden_until"] == until.isoformat() + "Z"
    assert learner["score_given"] is None and learner["score_maximum"] is None and learner["passed"] is None
    assert learner["checks"] == [{"id": "hello-file", "title": "Create ~/hello.txt", "state": "done"},
                                 {"id": "lab-open", "title": "Open the lab", "state": "done"}]
    assert HINT not in get(ada, f"/api/labs/{lab_id}/attempts/latest").text

    teacher = get(grace, started["url"]).json()
    assert teacher["results_hidden_until"] is None and teacher["score_given"] == 2.5
    assert [(c["state"], c["hint"]) for c in teacher["checks"]] == [("failed", HINT), ("passed", "")]

    set_activity(rt, lab_id, hide_results_until=utcnow() - timedelta(minutes=1))
    shown = get(ada, started["url"]).json()
    assert shown["results_hidden_until"] is None and shown["score_given"] == 2.5, "after the date the learner sees it all"


def test_the_instructor_sees_every_learners_score_and_attempts(lms: LiveServer, rt: Runtime, home: Path) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    first = check(ada, lab_id).json()["attempt"]["id"]
    run_queued_jobs(rt)
    (home / "hello.txt").write_text("hi\n")
    second = check(ada, lab_id).json()["attempt"]["id"]
    run_queued_jobs(rt)
    activity_id = set_activity(rt, lab_id, grading_policy="best")

    grace = Person(rt, "emu-instructor-1")
    page = get(grace, f"/teach/activities/{activity_id}")
    assert page.status_code == 200
    html = page.text
    assert "Checks and scores" in html and "the best attempt counts" in html
    row = re.search(r'<tr data-user="\d+">\s*<th scope="row">Ada Lovelace</th>(.*?)</details>', html, re.S)
    assert row, html
    assert "10 of 10" in row.group(1) and "2 attempts" in row.group(1) and "2.5 of 10" in row.group(1)
    assert row.group(1).index(f'href="/teach/attempts/{second}"') < row.group(1).index(f'href="/teach/attempts/{first}"'), "newest first"
    assert "Learner (Check my work)" in row.group(1)

    detail = get(grace, f"/teach/attempts/{first}")
    assert detail.status_code == 200
    for text in ("Check attempt of Ada Lovelace", "2.5 of 10", "1 of 2 checks passed", "~/hello.txt is missing or empty.", f"Hint: {HINT}"):
        assert text in detail.text.replace("&gt;", ">"), text
    assert get(grace, "/teach/attempts/999999").status_code == 404
