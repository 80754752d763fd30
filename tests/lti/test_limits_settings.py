"""An instructor sets an activity's limits (hours per learner per week, minimum trust level) from the
instructor view: saved and audited as the instructor, a bad value refused with its message while what was
typed stays in the form and nothing changes, learners and posts without the CSRF token refused."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from broker.models import Activity, AuditEvent, User
from broker.runtime import Runtime
from tests.support.http import LiveServer
from tests.support.lms_browser import lms, Person, settings  # noqa: F401  (fixtures: settings, lms)

pytestmark = pytest.mark.slow


@pytest.fixture
def teacher(lms: LiveServer, rt: Runtime) -> Person:
    return Person(rt, "emu-instructor-1")


def _path(rt: Runtime) -> str:
    with rt.session() as db:
        return f"/teach/activities/{db.scalar(select(Activity)).id}"


def _limits(rt: Runtime) -> tuple[float | None, int]:
    with rt.session() as db:
        activity = db.scalar(select(Activity))
        return activity.weekly_hours_limit, activity.min_trust_level


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}"[^>]* value="([^"]*)"', html)
    assert found, f"no {name} input"
    return found.group(1)


def _audit_rows(rt: Runtime) -> list[AuditEvent]:
    with rt.session() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == "activity.limits").order_by(AuditEvent.id)))


def test_the_form_shows_no_limits_then_saves_them_audited_as_the_instructor(teacher: Person, rt: Runtime) -> None:
    path = _path(rt)
    page = teacher.http.get(teacher.base + path, timeout=10).text
    assert "Hours per week (each learner)" in page and "Minimum trust level" in page
    assert _field(page, "weekly_hours_limit") == "" and _field(page, "min_trust_level") == "0"

    saved = teacher.post(f"{path}/limits", path, data={"weekly_hours_limit": "2,5", "min_trust_level": "1"})
    assert saved.status_code == 200 and "The limits are saved." in saved.text
    assert _limits(rt) == (2.5, 1), "a decimal comma is read as a point"
    assert _field(saved.text, "weekly_hours_limit") == "2.5" and _field(saved.text, "min_trust_level") == "1"
    assert "2.5 hours per learner per week, opens at trust level 1" in saved.text
    # The course has no other lab with checks yet: saved, with a warning saying why nobody gets in.
    assert "This course has 0 other activities with checks so far, so no learner can reach trust level 1 yet" in saved.text

    with rt.session() as db:
        instructor_id = db.scalar(select(User.id).where(User.subject == "emu-instructor-1"))
    rows = _audit_rows(rt)
    assert [(r.actor, r.target) for r in rows] == [(f"instructor:{instructor_id}", f"activity:{path.rsplit('/', 1)[1]}")]
    assert rows[0].detail.endswith("hours per week none, minimum trust level 0 -> hours per week 2.5, minimum trust level 1")

    cleared = teacher.post(f"{path}/limits", path, data={"weekly_hours_limit": "", "min_trust_level": ""})
    assert cleared.status_code == 200 and _limits(rt) == (None, 0), "empty: no limit, and every learner"
    assert len(_audit_rows(rt)) == 2


@pytest.mark.parametrize(("hours", "trust", "message"), [
    ("-3", "0", "Hours per week cannot be negative; got -3."),
    ("lots", "0", "Hours per week must be a number such as 5 or 2.5 (or empty for no limit); got &#39;lots&#39;."),
    ("nan", "0", "Hours per week must be a number such as 5 or 2.5"),
    ("200", "0", "Hours per week can be at most 168 (a whole week); got 200."),
    ("0", "0", "Hours per week must be more than 0"),
    ("5", "-1", "The minimum trust level cannot be negative; got -1."),
    ("5", "1.5", "The minimum trust level must be a whole number such as 0, 1 or 2; got &#39;1.5&#39;."),
])
def test_a_bad_value_is_refused_with_its_message_and_changes_nothing(
    teacher: Person, rt: Runtime, hours: str, trust: str, message: str
) -> None:
    path = _path(rt)
    teacher.post(f"{path}/limits", path, data={"weekly_hours_limit": "4", "min_trust_level": "0"})
    refused = teacher.post(f"{path}/limits", path, data={"weekly_hours_limit": hours, "min_trust_level": trust})
    assert refused.status_code == 400
    assert f"Not saved: {message}" in refused.text
    assert _field(refused.text, "weekly_hours_limit") == hours and _field(refused.text, "min_trust_level") == trust, "what was typed stays"
    assert _limits(rt) == (4.0, 0)
    assert len(_audit_rows(rt)) == 1, "a refused change leaves no audit row"


def test_a_post_without_the_csrf_token_is_refused(teacher: Person, rt: Runtime) -> None:
    path = _path(rt)
    refused = teacher.http.post(f"{teacher.base}{path}/limits", data={"weekly_hours_limit": "3"}, timeout=10)
    assert refused.status_code == 400
    assert _limits(rt) == (None, 0) and _audit_rows(rt) == []


def test_a_learner_cannot_change_the_limits(teacher: Person, rt: Runtime) -> None:
    path = _path(rt)
    learner = Person(rt, "emu-learner-1")
    token = re.search(r'name="csrf_token" value="([^"]+)"', learner.landed.text)
    assert token
    refused = learner.http.post(f"{learner.base}{path}/limits",
                                data={"weekly_hours_limit": "1", "min_trust_level": "0", "csrf_token": token.group(1)}, timeout=10)
    assert refused.status_code == 404
    assert _limits(rt) == (None, 0) and _audit_rows(rt) == []
