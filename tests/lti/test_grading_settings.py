"""An instructor sets an activity's grading settings (policy, automatic checks, due date, exam mode) from
the instructor view; learners cannot, a post without the CSRF token is refused, and a bad value is shown
with its message while nothing changes."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from sqlalchemy import select

from broker.models import Activity
from broker.runtime import Runtime
from tests.support.http import LiveServer
from tests.support.lms_browser import lms, Person, settings  # noqa: F401  (fixtures: settings, lms)

pytestmark = pytest.mark.slow

SETTINGS = ("grading_policy", "auto_check", "due_at", "hide_results_until")


@pytest.fixture
def teacher(lms: LiveServer, rt: Runtime) -> Person:
    return Person(rt, "emu-instructor-1")


def _page_path(rt: Runtime) -> str:
    with rt.session() as db:
        return f"/teach/activities/{db.scalar(select(Activity)).id}"


def _grading(rt: Runtime) -> dict[str, object]:
    with rt.session() as db:
        activity = db.scalar(select(Activity))
        return {name: getattr(activity, name) for name in SETTINGS}


def _field(html: str, name: str) -> str:
    """The value a datetime-local input shows, or the radio button of a choice that is checked."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} input"
    return found.group(1)


def _checked(html: str, name: str) -> list[str]:
    return re.findall(rf'name="{name}" value="([^"]+)"[^>]* checked', html)


def test_the_instructor_view_shows_the_form_with_the_current_settings(teacher: Person, rt: Runtime) -> None:
    page = teacher.http.get(teacher.base + _page_path(rt), timeout=10).text
    assert "Change the grading settings" in page and "in UTC" in page
    assert _checked(page, "grading_policy") == ["latest"] and _checked(page, "auto_check") == ["none"]
    assert _field(page, "due_at") == "" and _field(page, "hide_results_until") == ""
    for explanation in ("most recent finished attempt", "highest score", "passes every check",
                        "just before a learner&#39;s lab is suspended", "Once the due date has passed"):
        assert explanation in page


def test_an_instructor_saves_each_setting(teacher: Person, rt: Runtime) -> None:
    path = _page_path(rt)
    with rt.session() as db:  # with checks, the page sums the settings up above the scores
        db.scalar(select(Activity)).image.spec = {"checks": [{"title": "Create a user", "weight": 1}]}
        db.commit()

    saved = teacher.post(f"{path}/grading", path, data={"grading_policy": "best"})
    assert saved.status_code == 200 and "The grading settings are saved." in saved.text
    assert _grading(rt) == {"grading_policy": "best", "auto_check": "none", "due_at": None, "hide_results_until": None}
    assert _checked(saved.text, "grading_policy") == ["best"] and "grading policy: the best attempt counts" in saved.text

    teacher.post(f"{path}/grading", path, data={"grading_policy": "first_passing"})
    assert _grading(rt)["grading_policy"] == "first_passing"

    saved = teacher.post(f"{path}/grading", path, data={"due_at": "2027-01-15T12:30"})
    assert _grading(rt)["due_at"] == datetime(2027, 1, 15, 12, 30), "a datetime-local value is UTC"
    assert _field(saved.text, "due_at") == "2027-01-15T12:30" and "due <time" in saved.text

    teacher.post(f"{path}/grading", path, data={"auto_check": "at_deadline"})
    assert _grading(rt)["auto_check"] == "at_deadline"
    teacher.post(f"{path}/grading", path, data={"auto_check": "on_suspend"})
    assert _grading(rt)["auto_check"] == "on_suspend"

    saved = teacher.post(f"{path}/grading", path, data={"hide_results_until": "2027-02-01T09:00"})
    assert _grading(rt)["hide_results_until"] == datetime(2027, 2, 1, 9, 0)
    assert "exam mode: learners see their results from" in saved.text

    # The whole form, as a browser sends it: an empty date clears it (exam mode off).
    form = {"grading_policy": "latest", "auto_check": "none", "due_at": "", "hide_results_until": ""}
    saved = teacher.post(f"{path}/grading", path, data=form)
    assert saved.status_code == 200
    assert _grading(rt) == {"grading_policy": "latest", "auto_check": "none", "due_at": None, "hide_results_until": None}


def test_a_bad_value_shows_its_message_keeps_what_was_typed_and_changes_nothing(teacher: Person, rt: Runtime) -> None:
    path = _page_path(rt)
    teacher.post(f"{path}/grading", path, data={"grading_policy": "best", "due_at": "2027-01-15T12:00"})
    before = _grading(rt)

    form = {"grading_policy": "first_passing", "auto_check": "on_suspend", "due_at": "next friday", "hide_results_until": "2027-03-01T08:00"}
    refused = teacher.post(f"{path}/grading", path, data=form)
    assert refused.status_code == 400
    assert "Not saved: The due date must be a date and time" in refused.text and "next friday" in refused.text
    assert _field(refused.text, "due_at") == "next friday"
    assert _field(refused.text, "hide_results_until") == "2027-03-01T08:00"
    assert _checked(refused.text, "grading_policy") == ["first_passing"] and _checked(refused.text, "auto_check") == ["on_suspend"]
    assert _grading(rt) == before, "nothing of a refused form is stored"

    # set_grading's own checks: checking at the deadline needs a due date; an unknown policy.
    refused = teacher.post(f"{path}/grading", path, data={"auto_check": "at_deadline", "due_at": ""})
    assert refused.status_code == 400 and "Checks at the due date need a due date" in refused.text
    refused = teacher.post(f"{path}/grading", path, data={"grading_policy": "worst"})
    assert refused.status_code == 400 and "grading_policy must be one of" in refused.text
    assert _grading(rt) == before


def test_a_post_without_the_csrf_token_is_refused(teacher: Person, rt: Runtime) -> None:
    path = _page_path(rt)
    refused = teacher.http.post(f"{teacher.base}{path}/grading", data={"grading_policy": "best"}, timeout=10)
    assert refused.status_code == 400
    wrong = teacher.http.post(f"{teacher.base}{path}/grading", data={"grading_policy": "best", "csrf_token": "forged"}, timeout=10)
    assert wrong.status_code == 400
    assert _grading(rt)["grading_policy"] == "latest"


def test_a_learner_cannot_change_the_grading_settings(teacher: Person, rt: Runtime) -> None:
    path = _page_path(rt)
    learner = Person(rt, "emu-learner-1")
    token = re.search(r'name="csrf_token" value="([^"]+)"', learner.landed.text)
    assert token, "the learner's page has a CSRF token"
    refused = learner.http.post(f"{learner.base}{path}/grading", data={"grading_policy": "best", "csrf_token": token.group(1)}, timeout=10)
    assert refused.status_code in (403, 404)
    assert _grading(rt)["grading_policy"] == "latest"
    assert learner.http.get(f"{learner.base}{path}", timeout=10).status_code in (403, 404)
