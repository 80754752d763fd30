"""The course roster through Names and Role Provisioning Services, from the test LMS over real HTTP:
every member across `Link: rel="next"` pages, with the roster scope's token, and the page cap."""

from __future__ import annotations

from typing import Iterator

import pytest

from broker.runtime import Runtime
from lti.nrps import Member, roster
from lti.service_token import PermanentServiceError
from tests.lti.platform_double import ALL_SCOPES, LEARNER, SCOPE_NRPS, PlatformDouble, connect, serve_platform
from tests.support.world import World

CTX = "course-fake"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"


@pytest.fixture
def double(rt: Runtime) -> Iterator[PlatformDouble]:
    yield from serve_platform(rt, page_size=3)


@pytest.fixture
def course(rt: Runtime, world: World, double: PlatformDouble) -> World:
    connect(rt, world.activity_id, CTX, double)
    double.enrol(CTX, "teacher-1", name="Ada Teacher", roles=(INSTRUCTOR,))
    for n in range(1, 7):
        double.enrol(CTX, f"learner-{n}", name=f"Learner {n}", status="Inactive" if n == 6 else "Active")
    return world


def test_the_roster_has_every_member_across_pages(rt: Runtime, course: World, double: PlatformDouble) -> None:
    members = roster(rt, course.activity_id)

    assert [m.user_id for m in members] == ["teacher-1"] + [f"learner-{n}" for n in range(1, 7)]
    assert members[0] == Member(
        user_id="teacher-1", name="Ada Teacher", given_name="", family_name="", email="teacher-1@example.edu",
        roles=(INSTRUCTOR,), status="Active",
    )
    assert members[-1].status == "Inactive" and members[-1].roles == (LEARNER,)
    pages = [line for line in double.log if line.startswith("GET /courses/course-fake/memberships")]
    assert pages == [
        "GET /courses/course-fake/memberships",
        "GET /courses/course-fake/memberships?limit=3&offset=3",
        "GET /courses/course-fake/memberships?limit=3&offset=6",
    ]
    assert [form["scope"] for form in double.token_forms] == [SCOPE_NRPS]


def test_a_roster_longer_than_the_page_cap_is_an_error_not_a_short_list(rt: Runtime, course: World) -> None:
    with pytest.raises(PermanentServiceError, match="more than 2 pages"):
        roster(rt, course.activity_id, max_pages=2)


def test_an_lms_that_offered_no_roster_service_says_so(rt: Runtime, world: World, double: PlatformDouble) -> None:
    connect(rt, world.activity_id, CTX, double, scopes=frozenset(ALL_SCOPES - {SCOPE_NRPS}))
    with pytest.raises(PermanentServiceError, match="no LMS roster service"):
        roster(rt, world.activity_id)
