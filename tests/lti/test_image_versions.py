"""An activity keeps the image version it was created with until an instructor moves it to the newest."""

from __future__ import annotations


import pytest
from sqlalchemy import select

from broker.models import Activity, Image
from broker.runtime import Runtime
from tests.support.http import LiveServer
from tests.support.lms_browser import lms, Person, settings  # noqa: F401  (fixtures: settings, lms)

pytestmark = pytest.mark.slow


def test_an_instructor_moves_an_activity_to_a_newer_image_version(lms: LiveServer, rt: Runtime) -> None:
    Person(rt, "emu-learner-1")  # the first launch creates the activity on version 1
    teacher = Person(rt, "emu-instructor-1")
    assert "(version 1)" in teacher.landed.text and "Update this activity" not in teacher.landed.text
    with rt.session() as db:
        activity = db.scalar(select(Activity))
        db.add(Image(slug="local-desktop", version=2, title="Linux desktop", description="", protocol="vnc", spec={}))
        db.commit()
        page_path = f"/teach/activities/{activity.id}"
    page = teacher.http.get(teacher.base + page_path, timeout=10)
    assert "Version 2 of this lab image is in the catalogue" in page.text
    with rt.session() as db:
        assert db.scalar(select(Activity)).image.version == 1, "nothing moves before the instructor asks"
    moved = teacher.post(f"{page_path}/image", page_path, data={})
    assert moved.status_code == 200 and "now uses version 2" in moved.text
    with rt.session() as db:
        assert db.scalar(select(Activity)).image.version == 2
    again = teacher.post(f"{page_path}/image", page_path, data={})
    assert "already uses the newest version" in again.text
    learner = Person(rt, "emu-learner-2")
    assert learner.http.post(f"{learner.base}{page_path}/image", data={}, timeout=10).status_code in (400, 404)


def test_a_new_activity_takes_its_idle_and_reap_defaults_from_the_catalogue_entry(lms: LiveServer, rt: Runtime) -> None:
    with rt.session() as db:
        db.scalar(select(Image)).spec = {"defaults": {"idle_suspend_after": 777, "reap_after_days": 5}}
        db.commit()
    Person(rt, "emu-learner-1")
    with rt.session() as db:
        activity = db.scalar(select(Activity))
        assert (activity.idle_suspend_after, activity.reap_after_days) == (777, 5)
