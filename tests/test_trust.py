"""Trust levels (broker.trust, broker.launch_gate) as a learner meets them: a lab that opens at a trust
level refuses them with the reason and the labs whose checks unlock it, until they have passed the checks
of enough of the course's other labs. Checks run for real (the fake backend's `local` target and the
`local` grading hook, as queued jobs run in-process); the app is served over HTTP; both databases.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import select

from broker import attempts, services, trust
from broker.clock import utcnow
from broker.models import Activity, CheckAttempt, Course, Image, Lab, Membership, User
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.support.inline import Clock, lab_state, run_queued_jobs
from tests.support.world import World
from tests.web.conftest import clock, learner, server  # noqa: F401  (fixtures)

GATED = "GPU lab"


def graded_image(rt: Runtime, slug: str, done_file: str) -> int:
    """An image whose one check passes once `done_file` exists in the lab's home (the fake backend's dir)."""
    spec = {"checks": [{"id": "done", "title": f"Create {done_file}", "builtin": "file-exists", "path": done_file}]}
    with rt.session() as session:
        image = Image(slug=slug, title=slug, protocol="vnc", spec=spec)
        session.add(image)
        session.commit()
        return image.id


def add_activity(rt: Runtime, world: World, title: str, image_id: int | None = None, course_id: int | None = None, **fields: Any) -> int:
    with rt.session() as session:
        template = session.get(Activity, world.activity_id)
        activity = Activity(course_id=course_id or world.course_id, resource_link_id=title, title=title,
                            image_id=image_id or template.image_id, backend_id=world.backend_id, **fields)
        session.add(activity)
        session.commit()
        return activity.id


@pytest.fixture
def course(rt: Runtime, world: World) -> dict[str, int]:
    """The world's course: two graded labs, one without checks, one graded lab that itself opens at level 1,
    and the GPU lab that opens at trust level 2."""
    gpu_image = Image(slug="cuda", title="CUDA", protocol="vnc", spec={"resources": {"gpu": True}})
    with rt.session() as session:
        session.add(gpu_image)
        session.commit()
        gpu_image_id = gpu_image.id
    return {
        "Intro to CUDA": add_activity(rt, world, "Intro to CUDA", graded_image(rt, "intro", "intro-done")),
        "Reading notes": add_activity(rt, world, "Reading notes"),
        "Profiling": add_activity(rt, world, "Profiling", graded_image(rt, "profiling", "profiling-done")),
        "Advanced": add_activity(rt, world, "Advanced", graded_image(rt, "advanced", "advanced-done"), min_trust_level=1),
        GATED: add_activity(rt, world, GATED, gpu_image_id, min_trust_level=2),
    }


def user_of(rt: Runtime, name: str) -> int:
    with rt.session() as session:
        return session.scalar(select(User.id).where(User.subject == name))


def check_lab(rt: Runtime, person: Learner, name: str, activity_id: int, fake_dir: Path, done_file: str | None) -> CheckAttempt:
    """The learner opens the lab, does the work (or not) and checks it: the real attempt job runs."""
    lab_id = person.lab_id(person.launch(activity_id))
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    if done_file:
        fake_dir.mkdir(parents=True, exist_ok=True)
        (fake_dir / done_file).write_text("done\n")
    attempt_id = attempts.start_check(rt, user_of(rt, name), lab_id)
    run_queued_jobs(rt)
    with rt.session() as session:
        attempt = session.get(CheckAttempt, attempt_id)
        assert attempt is not None and attempt.state == "done"
        return attempt


def refusal(response: Any) -> str:
    assert response.status_code == 403, response.text
    assert "This lab cannot open now" in response.text
    return response.text.replace("&#39;", "'")


def test_a_learner_unlocks_the_gpu_lab_by_passing_the_checks_of_other_labs(
    rt: Runtime, world: World, course: dict[str, int], server: LiveServer, learner: Callable[[str], Learner], fake_dir: Path  # noqa: F811
) -> None:
    ada = learner("ada")
    page = refusal(ada.launch(course[GATED]))
    assert ("This lab uses scarce GPUs and opens at trust level 2. You have 0: pass the checks of 'Intro to CUDA' and "
            "'Profiling' to unlock it.") in page, "labs without checks, and labs the learner cannot open yet, are not named"

    failed = check_lab(rt, ada, "ada", course["Profiling"], fake_dir, None)
    assert [r["state"] for r in failed.results] == ["failed"]
    assert "You have 0:" in refusal(ada.launch(course[GATED])), "a failed attempt earns nothing"

    check_lab(rt, ada, "ada", course["Intro to CUDA"], fake_dir, "intro-done")
    page = refusal(ada.launch(course[GATED]))
    assert ("This lab uses scarce GPUs and opens at trust level 2. You have 1: pass the checks of 'Profiling' or "
            "'Advanced' to unlock it.") in page, "level 1 opens 'Advanced', so it can raise the level too"
    with rt.session() as session:
        assert session.scalar(select(Lab.id).where(Lab.activity_id == course[GATED])) is None, "a refused launch creates nothing"

    check_lab(rt, ada, "ada", course["Profiling"], fake_dir, "profiling-done")
    opened = ada.launch(course[GATED])
    assert opened.status_code == 200 and ada.lab_id(opened)
    with rt.session() as session:
        gated = session.get(Activity, course[GATED])
        assert trust.level(session, user_of(rt, "ada"), gated) == 2

    (fake_dir / "profiling-done").unlink()  # a later failing attempt takes nothing away
    check_lab(rt, ada, "ada", course["Profiling"], fake_dir, None)
    with rt.session() as session:
        assert trust.level(session, user_of(rt, "ada"), session.get(Activity, course[GATED])) == 2


def test_only_other_labs_of_the_same_course_count(
    rt: Runtime, world: World, course: dict[str, int], server: LiveServer, learner: Callable[[str], Learner], fake_dir: Path  # noqa: F811
) -> None:
    ada = learner("ada")
    with rt.session() as session:
        other = Course(issuer="test", context_id="another-course", title="Another course")
        session.add(other)
        session.commit()
        other_id = other.id
    elsewhere = add_activity(rt, world, "Elsewhere", graded_image(rt, "elsewhere", "elsewhere-done"), course_id=other_id)
    check_lab(rt, ada, "ada", elsewhere, fake_dir, "elsewhere-done")
    check_lab(rt, ada, "ada", course["Intro to CUDA"], fake_dir, "intro-done")
    with rt.session() as session:
        intro = session.get(Activity, course["Intro to CUDA"])
        gated = session.get(Activity, course[GATED])
        uid = user_of(rt, "ada")
        assert trust.level(session, uid, gated) == 1, "another course's lab does not count"
        assert trust.level(session, uid, intro) == 0, "an activity's own checks do not count for it"


def test_in_exam_mode_a_pass_counts_once_results_are_released(
    rt: Runtime, world: World, course: dict[str, int], server: LiveServer, learner: Callable[[str], Learner],  # noqa: F811
    fake_dir: Path, clock: Clock,  # noqa: F811
) -> None:
    with rt.session() as session:
        session.get(Activity, course["Intro to CUDA"]).hide_results_until = utcnow() + timedelta(days=1)
        session.commit()
    ada = learner("ada")
    check_lab(rt, ada, "ada", course["Intro to CUDA"], fake_dir, "intro-done")
    check_lab(rt, ada, "ada", course["Profiling"], fake_dir, "profiling-done")
    page = refusal(ada.launch(course[GATED]))
    assert "You have 1: pass the checks of 'Intro to CUDA' or 'Advanced' to unlock it." in page, "the hidden result is not told"
    clock.advance(2 * 24 * 3600)
    assert ada.launch(course[GATED]).status_code == 200


def test_instructors_are_never_refused(
    rt: Runtime, world: World, course: dict[str, int], server: LiveServer, learner: Callable[[str], Learner]  # noqa: F811
) -> None:
    teacher = learner("teacher")
    with rt.session() as session:
        session.add(Membership(course_id=world.course_id, user_id=user_of(rt, "teacher"), role="instructor"))
        session.commit()
    opened = teacher.launch(course[GATED])
    assert opened.status_code == 200 and teacher.lab_id(opened)


def test_a_launch_on_the_learners_behalf_is_judged_as_theirs(
    rt: Runtime, world: World, course: dict[str, int], server: LiveServer, learner: Callable[[str], Learner]  # noqa: F811
) -> None:
    learner("ada")
    with pytest.raises(services.LaunchRefused, match=r"^This lab uses scarce GPUs and opens at trust level 2\. You have 0:"):
        services.launch(rt, user_of(rt, "ada"), course[GATED], "instructor:1")  # a class session's pre-warm, say
    with rt.session() as session:
        assert session.scalar(select(Lab.id).where(Lab.activity_id == course[GATED])) is None


def test_when_the_course_cannot_raise_the_level_far_enough_the_learner_is_told_to_ask(
    rt: Runtime, world: World, course: dict[str, int], server: LiveServer, learner: Callable[[str], Learner]  # noqa: F811
) -> None:
    with rt.session() as session:
        session.get(Activity, course[GATED]).min_trust_level = 3
        session.get(Activity, world.activity_id).min_trust_level = 1
        session.commit()
    ada = learner("ada")
    assert ("This lab uses scarce GPUs and opens at trust level 3. You have 0: pass the checks of 'Intro to CUDA' and "
            "'Profiling', and ask your instructor about the rest: this course has no other lab that can raise it yet."
            ) in refusal(ada.launch(course[GATED]))
    assert ("This lab opens at trust level 1. You have 0: pass the checks of 'Intro to CUDA' or 'Profiling' to unlock it."
            ) in refusal(ada.launch(world.activity_id)), "a lab without a GPU says only the level"
    lonely = add_activity(rt, world, "Alone", course_id=_new_course(rt), min_trust_level=1)
    assert ("This lab opens at trust level 1. You have 0, and no other lab of this course can raise it yet. "
            "Please ask your instructor.") in refusal(ada.launch(lonely))


def _new_course(rt: Runtime) -> int:
    with rt.session() as session:
        course = Course(issuer="test", context_id="lonely", title="Lonely")
        session.add(course)
        session.commit()
        return course.id


def test_more_than_one_level_short_names_how_many_to_pass() -> None:
    short = trust.TrustShortfall(required=2, level=0, unlockers=["A", "B", "C"], gpu=False)
    assert short.message() == "This lab opens at trust level 2. You have 0: pass the checks of 2 of 'A', 'B' or 'C' to unlock it."
