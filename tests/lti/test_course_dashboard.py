"""The course dashboard over real HTTP: who reaches it (only the course's instructors; everyone else gets
404, and a post without the CSRF token 400), what it shows of each learner, and its actions (suspend and
reset one lab, "Suspend all" per activity and per course) carried out by real rq worker processes on the
fake backend, each written to the audit log.

People arrive as an LMS sends them, through the built-in emulator's signed launches; a second emulator
course has an instructor of its own, who must not reach the demo course's dashboard.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from sqlalchemy import select

from broker.lifecycle import LabState
from broker.models import AuditEvent, Course, Lab, Membership, User
from broker.runtime import Runtime
from lti.emulator import people, store
from tests.support.http import LiveServer
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.lms_browser import get, lms, Person, running_lab, settings  # noqa: F401  (fixtures: settings, lms)
from tests.support.waiting import wait_state
from tests.support.workers import WorkerPool

pytestmark = pytest.mark.slow

OTHER_COURSE = "other-course"
OTHER_TEACHER = people.Person("emu-instructor-2", "Edsger", "Dijkstra", "edsger@example.edu",
                              (people.INSTRUCTOR, people.FACULTY), "instructor")


@pytest.fixture
def grace(lms: LiveServer, rt: Runtime) -> Person:
    return Person(rt, "emu-instructor-1")


# -- helpers ---------------------------------------------------------------------------------------------


def course_id(rt: Runtime) -> int:
    with rt.session() as db:
        return db.scalar(select(Course.id).where(Course.context_id == "demo-course"))


def dashboard_path(rt: Runtime) -> str:
    return f"/teach/courses/{course_id(rt)}"


def second_link(rt: Runtime, title: str = "Second lab") -> str:
    """Another resource link in the demo course, on the same lab image: a second activity once launched."""
    return store.add_link(rt, "demo-course", title, custom={"lab": "local-desktop"})["id"]


def other_course_teacher(rt: Runtime) -> Person:
    """An instructor of another emulator course (with a LabDesk link of its own), launched into it."""
    store.ensure_seeded(rt)
    rt.redis.hset(store.COURSES, OTHER_COURSE, json.dumps({"id": OTHER_COURSE, "label": "OTHER-1", "title": "Other course"}))
    rt.redis.hset(store.key("course", OTHER_COURSE, "members"), OTHER_TEACHER.sub, json.dumps({**OTHER_TEACHER.as_dict(), "order": 0}))
    link = store.add_link(rt, OTHER_COURSE, "Other lab", custom={"lab": "local-desktop"})
    return Person(rt, OTHER_TEACHER.sub, link_id=link["id"], context=OTHER_COURSE)


def row(html: str, name: str) -> str:
    found = re.search(rf'<tr data-user="\d+"[^>]*>\s*<th scope="row">{name}</th>(.*?)</tr>', html, re.S)
    assert found, f"no row of {name}"
    return found.group(1)


def audit_rows(rt: Runtime) -> list[AuditEvent]:
    with rt.session() as db:
        return list(db.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def posted(person: Person, path: str, csrf_from: str) -> requests.Response:
    """A form post as the page sends it (CSRF token in the form), redirects followed."""
    token = person.csrf(csrf_from)
    return person.http.post(person.base + path, data={"csrf_token": token}, timeout=10)


# -- what the dashboard shows ------------------------------------------------------------------------------


def test_the_dashboard_lists_each_learners_lab_score_and_attempts(grace: Person, rt: Runtime) -> None:
    ada, ada_lab = running_lab(rt, "emu-learner-1")
    alan, alan_lab = running_lab(rt, "emu-learner-2")
    with rt.session() as db:
        db.get(Lab, alan_lab).state = "suspended"
        db.commit()
    activity_page = get(grace, grace.landed.url.removeprefix(grace.base))
    assert f'href="{dashboard_path(rt)}"' in activity_page.text, "the activity view links the course dashboard"

    page = get(grace, dashboard_path(rt))
    assert page.status_code == 200 and "Demo course" in page.text and "Demo desktop lab" in page.text
    ada_row, alan_row = row(page.text, "Ada Lovelace"), row(page.text, "Alan Turing")
    assert '<td class="state">running</td>' in ada_row and f'href="/teach/labs/{ada_lab}/watch"' in ada_row
    assert f'action="/teach/labs/{ada_lab}/suspend"' in ada_row and f'action="/teach/labs/{ada_lab}/reset"' in ada_row
    assert "no score yet" in ada_row and "<td>0</td>" in ada_row
    assert '<td class="state">suspended</td>' in alan_row and "/watch" not in alan_row and "/suspend" not in alan_row
    assert "Grace Hopper" not in page.text.split("<tbody>", 1)[1], "the instructor is not one of the class"

    only_suspended = get(grace, dashboard_path(rt) + "?state=suspended").text
    assert "Alan Turing" in only_suspended and "Ada Lovelace" not in only_suspended
    with rt.session() as db:  # Alan was active later than Ada: first when sorted by last activity
        db.get(Lab, alan_lab).last_active_at = db.get(Lab, ada_lab).last_active_at.replace(year=2099)
        db.commit()
    by_activity = get(grace, dashboard_path(rt) + "?sort=last_activity").text
    assert by_activity.index("Alan Turing") < by_activity.index("Ada Lovelace")
    by_name = get(grace, dashboard_path(rt)).text
    assert by_name.index("Ada Lovelace") < by_name.index("Alan Turing")


# -- who reaches it ----------------------------------------------------------------------------------------


def test_only_the_courses_instructors_reach_the_dashboard_and_its_actions(grace: Person, rt: Runtime, lms: LiveServer) -> None:
    ada, lab_id = running_lab(rt, "emu-learner-1")
    with rt.session() as db:
        activity_id = db.get(Lab, lab_id).activity_id
    course = course_id(rt)
    gets = [f"/teach/courses/{course}"]
    posts = [f"/teach/labs/{lab_id}/suspend", f"/teach/labs/{lab_id}/reset",
             f"/teach/activities/{activity_id}/suspend-all", f"/teach/courses/{course}/suspend-all"]
    assert get(grace, gets[0]).status_code == 200

    edsger = other_course_teacher(rt)
    anonymous = requests.Session()
    anonymous_token = re.search(r'name="csrf_token" value="([^"]+)"', anonymous.get(lms.url + "/", timeout=10).text)
    assert anonymous_token, "the sign-in page gives an anonymous browser a CSRF token"
    for who, person, token in (("learner", ada, ada.csrf(f"/labs/{lab_id}")),
                               ("another course's instructor", edsger, edsger.csrf(edsger.landed.url.removeprefix(edsger.base))),
                               ("anonymous", None, anonymous_token.group(1))):
        http = person.http if person else anonymous
        for path in gets:
            assert http.get(lms.url + path, timeout=10).status_code == 404, (who, path)
        for path in posts:
            assert http.post(lms.url + path, data={"csrf_token": token}, timeout=10).status_code == 404, (who, path)
    for path in gets + posts:  # unknown ids read the same
        unknown = re.sub(r"/\d+", "/999999", path, count=1)
        assert (get(grace, unknown) if path in gets else grace.http.post(grace.base + unknown, data={"csrf_token": grace.csrf(gets[0])}, timeout=10)).status_code == 404
    for path in posts:
        assert grace.http.post(grace.base + path, timeout=10).status_code == 400, f"{path} without the CSRF token"
        assert grace.http.post(grace.base + path, data={"csrf_token": "forged"}, timeout=10).status_code == 400, path
    assert lab_state(rt, lab_id) == "running" and audit_rows(rt) == [], "nothing refused changed anything"


def test_a_teacher_the_lms_no_longer_lists_as_instructor_is_refused(grace: Person, rt: Runtime) -> None:
    """The session alone is not enough: the membership the last launch recorded must still say instructor."""
    with rt.session() as db:
        member = db.scalar(select(Membership).where(Membership.course_id == course_id(rt)))
        assert member.role == "instructor"
        member.role = "learner"
        db.commit()
    assert get(grace, dashboard_path(rt)).status_code == 404


# -- actions, carried out by real workers -----------------------------------------------------------------


def test_suspend_and_reset_a_learners_lab(grace: Person, rt: Runtime, workers: WorkerPool) -> None:
    _, ada_lab = running_lab(rt, "emu-learner-1")
    _, alan_lab = running_lab(rt, "emu-learner-2")
    workers.start(1)
    path = dashboard_path(rt)

    done = posted(grace, f"/teach/labs/{ada_lab}/suspend", path)
    assert done.status_code == 200 and done.url.startswith(grace.base + path)
    assert "Ada Lovelace&#39;s lab is being suspended." in done.text
    wait_state(rt, ada_lab, LabState.SUSPENDED)
    crafted = get(grace, f"{path}?done=suspend&lab=999999").text + get(grace, f"{path}?suspended=all&skipped=0").text
    assert 'role="status"' not in crafted, "the notice comes from the database and numbers, never from a link's words"
    again = posted(grace, f"/teach/labs/{ada_lab}/suspend", path)
    assert again.status_code == 409, "a suspended lab cannot be suspended again"

    reset = posted(grace, f"/teach/labs/{alan_lab}/reset", path)
    assert reset.status_code == 200 and "Alan Turing&#39;s lab is being reset" in reset.text
    wait_state(rt, alan_lab, LabState.DELETED)
    with rt.session() as db:
        fresh = db.scalar(select(Lab).where(Lab.user_id == db.get(Lab, alan_lab).user_id, Lab.id != alan_lab))
    assert fresh is not None, "a fresh lab was started for the learner"
    wait_state(rt, fresh.id, LabState.RUNNING)

    teacher = grace_id(rt)
    events = [(e.actor, e.action, e.lab_id, e.target) for e in audit_rows(rt)]
    assert events == [(f"instructor:{teacher}", "lab.suspend", ada_lab, f"lab:{ada_lab}"),
                      (f"instructor:{teacher}", "lab.reset", alan_lab, f"lab:{alan_lab}")]
    assert audit_rows(rt)[0].address == "127.0.0.1" and f"the new lab is {fresh.id}" in audit_rows(rt)[1].detail


def test_a_reset_the_learners_limits_would_refuse_keeps_their_lab_and_says_why(grace: Person, rt: Runtime) -> None:
    _, alan_lab = running_lab(rt, "emu-learner-2")
    with rt.session() as db:
        db.get(Lab, alan_lab).activity.min_trust_level = 1  # raised after Alan's lab started; nothing unlocks it yet
        db.commit()
    path = dashboard_path(rt)
    refused = posted(grace, f"/teach/labs/{alan_lab}/reset", path)
    assert refused.status_code == 200 and refused.url.startswith(grace.base + path)
    assert "Alan Turing&#39;s lab was not reset, and the lab they have is kept" in refused.text
    assert "trust level 1" in refused.text, "the instructor reads what the learner is told"
    assert lab_state(rt, alan_lab) == "running"
    assert [e.action for e in audit_rows(rt)] == [], "nothing was done, so nothing is audited"


def test_suspend_all_suspends_only_the_running_labs_of_that_activity(grace: Person, rt: Runtime, workers: WorkerPool) -> None:
    link = second_link(rt)
    _, ada_lab = running_lab(rt, "emu-learner-1")
    _, alan_lab = running_lab(rt, "emu-learner-2")
    other = Person(rt, "emu-learner-1", link_id=link)  # Ada's lab of the course's second activity
    other_lab = int(other.landed.url.rsplit("/", 1)[1])
    run_queued_jobs(rt)
    assert lab_state(rt, other_lab) == "running"
    workers.start(1)
    path = dashboard_path(rt)
    posted(grace, f"/teach/labs/{alan_lab}/suspend", path)
    wait_state(rt, alan_lab, LabState.SUSPENDED)
    with rt.session() as db:
        activity_id = db.get(Lab, ada_lab).activity_id

    page = get(grace, path).text
    assert page.count("Suspend all<span") == 2 and "Suspend all labs of this course…" in page
    done = posted(grace, f"/teach/activities/{activity_id}/suspend-all", path)
    assert done.status_code == 200 and "1 suspended, 1 skipped (not running)." in done.text
    wait_state(rt, ada_lab, LabState.SUSPENDED)
    assert lab_state(rt, other_lab) == "running", "another activity's lab is left alone"
    assert lab_state(rt, alan_lab) == "suspended"

    whole = posted(grace, f"/teach/courses/{course_id(rt)}/suspend-all", path)
    assert "1 suspended, 2 skipped (not running)." in whole.text
    wait_state(rt, other_lab, LabState.SUSPENDED)

    bulk = [e for e in audit_rows(rt) if e.action == "labs.suspend_all"]
    assert [(e.target, e.detail) for e in bulk] == [
        (f"activity:{activity_id}", f"1 suspended, 1 skipped: labs [{ada_lab}]"),
        (f"course:{course_id(rt)}", f"1 suspended, 2 skipped: labs [{other_lab}]"),
    ]
    assert all(e.actor == f"instructor:{grace_id(rt)}" for e in bulk)


def grace_id(rt: Runtime) -> int:
    with rt.session() as db:
        return db.scalar(select(User.id).where(User.subject == "emu-instructor-1"))
