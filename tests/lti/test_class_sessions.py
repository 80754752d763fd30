"""Class sessions on the course dashboard over real HTTP: an instructor schedules one (the start typed in
UTC), the warm-up job, run from the real rq queue when the movable clock reaches its time, starts the
learners' labs on the fake backend, and the dashboard shows them warmed; a learner who then launches lands
on their running lab. Refusals say why and keep what was typed; only the course's instructors reach the
actions (404 for everyone else, 400 without the CSRF token); every action is audited as the instructor.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
import requests
from rq import Queue
from sqlalchemy import select

from broker import schedule
from broker.clock import utcnow
from broker.dispatch import DEFAULT_QUEUE
from broker.models import Activity, AuditEvent, ClassSession, Lab, User
from broker.runtime import Runtime
from tests.lti.test_course_dashboard import dashboard_path, other_course_teacher, second_link
from tests.support.http import LiveServer
from tests.support.inline import Clock, clock, run_queued_jobs  # noqa: F401  (a fixture: clock)
from tests.support.lms_browser import get, lms, Person, settings  # noqa: F401  (fixtures: settings, lms)

pytestmark = pytest.mark.slow


@pytest.fixture
def klass(lms: LiveServer, rt: Runtime) -> dict[str, object]:
    """Ada and Alan opened the demo lab (so LabDesk knows them); Grace opened a second link of the course
    as its instructor, which made it an activity of its own, with no lab of anyone yet."""
    Person(rt, "emu-learner-1")
    Person(rt, "emu-learner-2")
    link = second_link(rt, "Networking lab")
    grace = Person(rt, "emu-instructor-1", link_id=link)
    with rt.session() as db:
        activity_id = db.scalar(select(Activity.id).where(Activity.title == "Networking lab"))
    return {"grace": grace, "activity_id": activity_id, "link": link}


def schedule_form(starts_at: str, duration: str = "60", lead: str = "10", pool: str = "2") -> dict[str, str]:
    return {"starts_at": starts_at, "duration_minutes": duration, "lead_minutes": lead, "warm_pool": pool}


def post_form(person: Person, path: str, form: dict[str, str], csrf_from: str) -> requests.Response:
    return person.http.post(person.base + path, data={"csrf_token": person.csrf(csrf_from), **form}, timeout=10)


def panel(page: str, activity_id: int) -> str:
    found = re.search(rf'<section class="class-sessions" id="classes-{activity_id}".*?</section>', page, re.S)
    assert found, "no class sessions panel"
    return found.group(0)


def typed_value(panel_html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', panel_html)
    assert found, name
    return html.unescape(found.group(1))


def user_id(rt: Runtime, sub: str) -> int:
    with rt.session() as db:
        return db.scalar(select(User.id).where(User.subject == sub))


def sessions(rt: Runtime) -> list[ClassSession]:
    with rt.session() as db:
        return list(db.scalars(select(ClassSession)))


def audit_rows(rt: Runtime, prefix: str = "class_session.") -> list[AuditEvent]:
    with rt.session() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.id)))


def run_warm_up(rt: Runtime) -> None:
    """What the cron scheduler does at `class_session_interval`: enqueue the warm-up, a worker runs it
    (and then the labs' own jobs)."""
    Queue(DEFAULT_QUEUE, connection=rt.redis).enqueue(schedule.prewarm_job)
    run_queued_jobs(rt)


def test_an_instructor_schedules_a_session_whose_warm_up_starts_the_labs(rt: Runtime, klass: dict[str, object], clock: Clock) -> None:
    grace, activity_id = klass["grace"], klass["activity_id"]
    path = dashboard_path(rt)
    starts = (utcnow() + timedelta(hours=2)).replace(second=0, microsecond=0)
    done = post_form(grace, f"/teach/activities/{activity_id}/class-sessions",
                     schedule_form(starts.strftime("%Y-%m-%dT%H:%M"), duration="90", lead="15", pool="2"), path)
    assert done.status_code == 200 and done.url.startswith(grace.base + path)
    warm = starts - timedelta(minutes=15)
    assert (f"Class session of Networking lab scheduled for {starts:%Y-%m-%d %H:%M} UTC; 2 labs start at {warm:%H:%M} UTC."
            in html.unescape(done.text))
    shown = panel(done.text, activity_id)
    assert f">{starts:%Y-%m-%d %H:%M}</time>" in shown and "90 min" in shown and "2 labs" in shown
    assert f"{warm:%Y-%m-%d %H:%M}" in shown and "not yet" in shown and "Starts (UTC)" in shown

    clock.advance(104 * 60)  # a minute before the warm-up: nothing starts
    run_warm_up(rt)
    with rt.session() as db:
        assert db.scalars(select(Lab).where(Lab.activity_id == activity_id)).all() == []
    clock.advance(60)
    run_warm_up(rt)

    with rt.session() as db:
        labs = {lab.user_id: lab for lab in db.scalars(select(Lab).where(Lab.activity_id == activity_id))}
    ada, alan = user_id(rt, "emu-learner-1"), user_id(rt, "emu-learner-2")
    assert set(labs) == {ada, alan} and all(lab.state == "running" and lab.prewarmed_by for lab in labs.values())
    page = get(grace, path).text
    assert "2 labs started at" in panel(page, activity_id)
    section = page.split(f'id="activity-{activity_id}"', 1)[1]
    warmed_row = '<td class="state">running <span class="muted">(pre-warmed for class, not opened yet)</span></td>'
    assert section.count(warmed_row) == 2, "the warmed labs are in the learners' rows, marked as not opened yet"

    # Ada comes to class: her launch lands on the lab that is already running, which is hers from now on.
    ada_now = Person(rt, "emu-learner-1", link_id=klass["link"])
    assert ada_now.landed.url.endswith(f"/labs/{labs[ada].id}")
    with rt.session() as db:
        assert db.get(Lab, labs[ada].id).prewarmed_by is None and db.get(Lab, labs[alan].id).prewarmed_by is not None
    section = get(grace, path).text.split(f'id="activity-{activity_id}"', 1)[1]
    assert section.count(warmed_row) == 1 and section.count('<td class="state">running</td>') == 1, "Ada's lab is hers now"

    teacher = f"instructor:{user_id(rt, 'emu-instructor-1')}"
    events = [(e.actor, e.action) for e in audit_rows(rt)]
    assert events == [(teacher, "class_session.add"), (teacher, "class_session.warm")]
    assert audit_rows(rt)[0].address == "127.0.0.1" and audit_rows(rt)[1].detail.startswith("2 of 2 labs pre-warmed")


@pytest.mark.parametrize("form, message", [
    (schedule_form("2001-01-01T09:00"), "The session must start in the future: 2001-01-01 09:00 UTC has passed"),
    (schedule_form("next tuesday"), "The start must be a date and time such as 2027-01-15T09:00 (UTC); got &#39;next tuesday&#39;."),
    (schedule_form("", pool="1"), "The start must be a date and time such as 2027-01-15T09:00 (UTC)."),
    (schedule_form("{soon}", pool="3"), "The warm pool must be 0 to 2: LabDesk knows 2 learners in this course (those who have opened it). You asked for 3."),
    (schedule_form("{soon}", lead="300"), "The labs can be started 0 to 240 minutes before the start, not 300."),
    (schedule_form("{soon}", duration="ninety"), "The length must be a whole number of minutes; got &#39;ninety&#39;."),
])
def test_a_refused_session_says_why_and_keeps_what_was_typed(rt: Runtime, klass: dict[str, object], form: dict[str, str], message: str) -> None:
    grace, activity_id = klass["grace"], klass["activity_id"]
    soon = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    form = {name: value.replace("{soon}", soon) for name, value in form.items()}
    refused = post_form(grace, f"/teach/activities/{activity_id}/class-sessions", form, dashboard_path(rt))
    assert refused.status_code == 400
    shown = panel(refused.text, activity_id)
    assert f"Not scheduled: {message}" in shown and 'role="alert"' in shown
    assert {name: typed_value(shown, name) for name in form} == form, "what was typed is kept"
    assert sessions(rt) == [] and audit_rows(rt) == []


def test_only_the_courses_instructors_schedule_and_cancel_sessions(rt: Runtime, klass: dict[str, object], lms: LiveServer) -> None:
    grace, activity_id = klass["grace"], klass["activity_id"]
    soon = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    post_form(grace, f"/teach/activities/{activity_id}/class-sessions", schedule_form(soon, pool="0"), dashboard_path(rt))
    [found] = sessions(rt)
    ada = Person(rt, "emu-learner-1")
    edsger = other_course_teacher(rt)
    adds, cancel = f"/teach/activities/{activity_id}/class-sessions", f"/teach/class-sessions/{found.id}/cancel"
    for who, person, token_page in (("learner", ada, ada.landed.url.removeprefix(ada.base)),
                                    ("another course's instructor", edsger, edsger.landed.url.removeprefix(edsger.base))):
        token = person.csrf(token_page)
        for path in (adds, cancel):
            answer = person.http.post(person.base + path, data={"csrf_token": token, **schedule_form(soon)}, timeout=10)
            assert answer.status_code == 404, (who, path)
    for path in (adds, cancel, "/teach/activities/999999/class-sessions", "/teach/class-sessions/999999/cancel"):
        if "999999" in path:
            assert post_form(grace, path, schedule_form(soon), dashboard_path(rt)).status_code == 404, path
            continue
        assert grace.http.post(grace.base + path, data=schedule_form(soon), timeout=10).status_code == 400, f"{path} without the CSRF token"
    assert [s.id for s in sessions(rt)] == [found.id] and [e.action for e in audit_rows(rt)] == ["class_session.add"]


def test_cancelling_a_warmed_session_deletes_the_labs_nobody_opened(rt: Runtime, klass: dict[str, object], clock: Clock) -> None:
    grace, activity_id = klass["grace"], klass["activity_id"]
    path = dashboard_path(rt)
    starts = (utcnow() + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    post_form(grace, f"/teach/activities/{activity_id}/class-sessions", schedule_form(starts, lead="30", pool="2"), path)
    run_warm_up(rt)
    with rt.session() as db:
        labs = list(db.scalars(select(Lab.id).where(Lab.activity_id == activity_id)))
    assert len(labs) == 2
    [found] = sessions(rt)

    done = post_form(grace, f"/teach/class-sessions/{found.id}/cancel", {}, path)
    assert done.status_code == 200 and "The class session was cancelled; 2 unused pre-warmed labs deleted." in done.text
    assert "No class session of Networking lab is scheduled." in panel(done.text, activity_id)
    run_queued_jobs(rt)
    with rt.session() as db:
        assert {db.get(Lab, lab_id).state for lab_id in labs} == {"deleted"}
    assert sessions(rt) == []
    cancelled = audit_rows(rt)[-1]
    assert (cancelled.action, cancelled.actor) == ("class_session.cancel", f"instructor:{user_id(rt, 'emu-instructor-1')}")
