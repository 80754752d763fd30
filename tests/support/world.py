"""A small world of test data: a user, a course, an image, a backend and an activity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.models import Activity, Backend, Course, Image, User
from broker.runtime import Runtime


@dataclass(frozen=True)
class World:
    user_id: int
    activity_id: int
    backend_id: int
    course_id: int


def make_world(
    rt: Runtime,
    kind: str = "fake",
    config: dict[str, Any] | None = None,
    backend_name: str = "fake",
    idle_suspend_after: int = 120,
    learner: str = "learner-1",
) -> World:
    with rt.session() as session:
        backend = Backend(name=backend_name, kind=kind, config=config or {})
        image = Image(slug=f"img-{backend_name}", title="Test image", protocol="vnc", spec={})
        course = Course(issuer="test", context_id=f"course-{backend_name}", title="Test course")
        user = User(issuer="test", subject=learner, name=learner)
        session.add_all([backend, image, course, user])
        session.flush()
        activity = Activity(
            course_id=course.id, resource_link_id="link-1", title="Test lab", image_id=image.id,
            backend_id=backend.id, idle_suspend_after=idle_suspend_after,
        )
        session.add(activity)
        session.commit()
        return World(user.id, activity.id, backend.id, course.id)


def add_learner(rt: Runtime, subject: str) -> int:
    with rt.session() as session:
        user = User(issuer="test", subject=subject, name=subject)
        session.add(user)
        session.commit()
        return user.id


def add_lab_catalogue(rt: Runtime, state_dir: str, slug: str) -> None:
    """What an LTI launch needs to open a lab: the fake backend (named by `default_backend = "fake"`) and
    the image a link's `lab` custom parameter names."""
    with rt.session() as session:
        session.add(Backend(name="fake", kind="fake", config={"state_dir": state_dir}))
        session.add(Image(slug=slug, title="Linux desktop", description="A light desktop", protocol="vnc", spec={}))
        session.commit()
