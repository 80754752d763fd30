"""/admin/labs over real HTTP: the filters and pages, bulk suspend through real `labdesk worker` processes
on the fake backend (running labs move, others are skipped with their reason, each audited as the admin),
delete only after a confirmation, and the doors: admins only, CSRF on the bulk form. PostgreSQL (the
workers share its database, as in production)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Callable

import pytest
import requests
from sqlalchemy import select

from broker import services
from broker.clock import utcnow
from broker.lifecycle import LabState
from broker.models import Activity, AuditEvent, Backend, Course, Lab
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.support.waiting import lab_row, wait_state
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner
from tests.support.admin_browser import Browser, signed_in_root

S = LabState


@pytest.fixture
def db_url(pg_only: str) -> str:
    return pg_only


@pytest.fixture
def admin_browser(rt: Runtime, server: LiveServer) -> Browser:
    return signed_in_root(rt, server.url)


def add_lab(rt: Runtime, activity_id: int, backend_id: int, state: str, age: timedelta, learner: str) -> int:
    """A lab row in `state`, created `age` ago (no job: for the list, which only reads)."""
    user_id = add_learner(rt, learner)
    now = utcnow()
    with rt.session() as db:
        lab = Lab(user_id=user_id, activity_id=activity_id, backend_id=backend_id, state=state,
                  created_at=now - age, last_active_at=now - age / 2, state_changed_at=now - age / 2)
        db.add(lab)
        db.commit()
        return lab.id


def listed(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'name="lab" value="(\d+)"', html)]


def notice(html: str) -> str:
    found = re.search(r'<p class="notice" role="status">(.*?)</p>', html, re.S)
    assert found, "no outcome shown"
    return found.group(1)


def bulk(browser: Browser, action: str, lab_ids: list[int], **extra: str) -> requests.Response:
    data = {"csrf_token": browser.token("/admin/labs"), "action": action, "lab": [str(i) for i in lab_ids], **extra}
    return browser.post("/admin/labs/bulk", data=data)


def test_filters_by_state_backend_course_and_age_a_page_at_a_time(rt: Runtime, world: World, admin_browser: Browser) -> None:
    with rt.session() as db:
        other = Backend(name="other", kind="fake", config={})
        course = Course(issuer="test", context_id="course-2", title="Second course")
        db.add_all([other, course])
        db.flush()
        image_id = db.get(Activity, world.activity_id).image_id
        activity = Activity(course_id=course.id, resource_link_id="l2", title="Other lab", image_id=image_id, backend_id=other.id)
        db.add(activity)
        db.commit()
        other_id, course2, activity2 = other.id, course.id, activity.id
    old_running = add_lab(rt, world.activity_id, world.backend_id, "running", timedelta(days=3), "ann")
    new_suspended = add_lab(rt, world.activity_id, world.backend_id, "suspended", timedelta(minutes=20), "bob")
    elsewhere = add_lab(rt, activity2, other_id, "running", timedelta(hours=5), "cy")
    failed = add_lab(rt, world.activity_id, world.backend_id, "failed", timedelta(hours=1), "dee")

    def ids(query: str) -> list[int]:
        page = admin_browser.get("/admin/labs" + query)
        assert page.status_code == 200, page.text
        return listed(page.text)

    assert ids("") == [new_suspended, elsewhere, old_running], "live labs by default, newest first (by creation)"
    assert ids("?state=running") == [elsewhere, old_running]
    assert ids("?state=failed") == [failed]
    assert ids("?backend=other") == [elsewhere]
    assert ids(f"?course={course2}") == [elsewhere]
    assert ids(f"?course={world.course_id}&state=running") == [old_running]
    assert ids("?age=gt1d") == [old_running]
    assert ids("?age=lt1h") == [new_suspended]
    assert "Second course" in admin_browser.get("/admin/labs").text, "the course filter offers courses by name"

    for n in range(50):
        add_lab(rt, activity2, other_id, "suspended", timedelta(hours=1), f"many-{n}")
    first = admin_browser.get("/admin/labs?backend=other").text
    assert len(listed(first)) == 50 and "51 labs match." in first and "Page 1 of 2" in first
    assert 'href="/admin/labs?backend=other&amp;page=2" rel="next"' in first
    second = admin_browser.get("/admin/labs?backend=other&page=2").text
    assert listed(second) == [elsewhere] and "Page 2 of 2" in second and 'rel="next"' not in second


@pytest.mark.parametrize("query, message", [
    ("state=sleeping", "“sleeping” is not a lab state"),
    ("course=networks", "“networks” is not a course."),
    ("age=old", "“old” is not an age filter."),
    ("page=0", "“0” is not a page number."),
])
def test_a_bad_filter_is_a_message_not_an_error(admin_browser: Browser, query: str, message: str) -> None:
    page = admin_browser.get("/admin/labs?" + query)
    assert page.status_code == 400 and message in page.text and 'role="alert"' in page.text


def test_bulk_suspend_moves_running_labs_and_skips_the_others_with_a_reason(
    rt: Runtime, world: World, workers: WorkerPool, admin_browser: Browser
) -> None:
    workers.start()
    learners = [world.user_id] + [add_learner(rt, f"learner-{n}") for n in (2, 3)]
    labs = [services.launch(rt, uid, world.activity_id, "test").id for uid in learners]
    for lab_id in labs:
        wait_state(rt, lab_id, S.RUNNING)
    first, second, asleep = labs
    services.request_state(rt, asleep, S.SUSPENDING, actor="test", reason="set up")
    wait_state(rt, asleep, S.SUSPENDED)

    listing = admin_browser.get("/admin/labs?state=running").text
    assert sorted(listed(listing)) == sorted([first, second])
    done = bulk(admin_browser, "suspend", [first, second, asleep], state="running")
    assert done.url.endswith("/admin/labs?state=running"), "back to the same filtered list"
    assert notice(done.text) == f"Suspend: 2 done, 1 skipped (it is suspended: lab {asleep})."
    for lab_id in (first, second):
        wait_state(rt, lab_id, S.SUSPENDED)
    assert lab_row(rt, asleep).state == "suspended"
    assert 'class="notice"' not in admin_browser.get("/admin/labs").text, "the outcome is shown once"
    with rt.session() as db:
        rows = db.scalars(select(AuditEvent).where(AuditEvent.action == "lab.suspend").order_by(AuditEvent.id)).all()
        assert [(e.lab_id, e.actor, e.detail, e.address) for e in rows] == [
            (first, "admin:root", "done", "127.0.0.1"), (second, "admin:root", "done", "127.0.0.1"),
            (asleep, "admin:root", "skipped: it is suspended", "127.0.0.1")]


def test_delete_asks_for_a_confirmation_first(rt: Runtime, world: World, admin_browser: Browser) -> None:
    lab_id = services.launch(rt, world.user_id, world.activity_id, "test").id  # requested: no worker needed
    asked = bulk(admin_browser, "delete", [lab_id])
    assert asked.status_code == 200 and "Delete 1 lab?" in asked.text and "cannot be undone" in asked.text
    assert lab_row(rt, lab_id).state == "requested", "nothing happens before the confirmation"
    done = bulk(admin_browser, "delete", [lab_id], confirm="yes")
    assert notice(done.text) == "Delete: 1 done, 0 skipped."
    assert lab_row(rt, lab_id).state == "deleting"


def test_nothing_ticked_or_an_unknown_action_is_a_message(rt: Runtime, world: World, admin_browser: Browser) -> None:
    lab_id = services.launch(rt, world.user_id, world.activity_id, "test").id
    assert notice(bulk(admin_browser, "suspend", []).text) == "Tick at least one lab first."
    assert notice(bulk(admin_browser, "explode", [lab_id]).text) == "“explode” is not a bulk action."
    assert lab_row(rt, lab_id).state == "requested"


def test_only_admins_act_and_csrf_is_enforced(
    rt: Runtime, world: World, server: LiveServer, admin_browser: Browser, learner: Callable[[str], Learner]
) -> None:
    lab_id = services.launch(rt, world.user_id, world.activity_id, "test").id
    page = Browser(server.url).get("/admin/labs", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"] == "/admin/login?next=/admin/labs"
    ada = learner("Ada")
    refused = ada.post("/admin/labs/bulk", data={"csrf_token": ada.csrf_token(), "action": "delete", "confirm": "yes", "lab": str(lab_id)})
    assert refused.status_code == 403 and "Admins only" in refused.text
    forged = admin_browser.post("/admin/labs/bulk", data={"action": "delete", "confirm": "yes", "lab": str(lab_id)})
    assert forged.status_code == 400 and "This form has expired" in forged.text
    assert lab_row(rt, lab_id).state == "requested"
    with rt.session() as db:
        assert db.scalars(select(AuditEvent).where(AuditEvent.action.startswith("lab."))).all() == []
