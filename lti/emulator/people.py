"""The people of the emulated LMS and their roles, as full LIS role URIs.

Named users are the ones the course page launches as; the generated learners exist so the roster is
longer than one page of the Names and Role Provisioning Service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership#"
LEARNER = MEMBERSHIP + "Learner"
INSTRUCTOR = MEMBERSHIP + "Instructor"
FACULTY = "http://purl.imsglobal.org/vocab/lis/v2/institution/person#Faculty"
STUDENT = "http://purl.imsglobal.org/vocab/lis/v2/institution/person#Student"
TEST_USER = "http://purl.imsglobal.org/vocab/lti/system/person#TestUser"

GENERATED_LEARNERS = 25


@dataclass(frozen=True)
class Person:
    """A user of the emulated LMS and the roles they hold in the demo course."""

    sub: str
    given_name: str
    family_name: str
    email: str
    roles: tuple[str, ...]
    kind: str  # "learner", "instructor" or "test": which launch button the course page shows

    @property
    def name(self) -> str:
        return f"{self.given_name} {self.family_name}"

    @property
    def is_instructor(self) -> bool:
        return INSTRUCTOR in self.roles

    def as_dict(self) -> dict[str, Any]:
        return {
            "sub": self.sub, "given_name": self.given_name, "family_name": self.family_name,
            "email": self.email, "roles": list(self.roles), "kind": self.kind,
        }

    @classmethod
    def of(cls, data: dict[str, Any]) -> "Person":
        return cls(
            sub=data["sub"], given_name=data["given_name"], family_name=data["family_name"],
            email=data["email"], roles=tuple(data["roles"]), kind=data["kind"],
        )


ADA = Person("emu-learner-1", "Ada", "Lovelace", "ada.lovelace@example.edu", (LEARNER, STUDENT), "learner")
ALAN = Person("emu-learner-2", "Alan", "Turing", "alan.turing@example.edu", (LEARNER, STUDENT), "learner")
GRACE = Person("emu-instructor-1", "Grace", "Hopper", "grace.hopper@example.edu", (INSTRUCTOR, FACULTY), "instructor")
TEST_STUDENT = Person("emu-test-student", "Test", "Student", "test.student@example.edu", (LEARNER, TEST_USER), "test")

NAMED = (ADA, ALAN, GRACE, TEST_STUDENT)


def generated_learners(count: int = GENERATED_LEARNERS) -> tuple[Person, ...]:
    return tuple(
        Person(f"emu-learner-gen-{n:02d}", "Learner", f"{n:02d}", f"learner{n:02d}@example.edu", (LEARNER, STUDENT), "learner")
        for n in range(1, count + 1)
    )


def everyone() -> tuple[Person, ...]:
    """The demo course's roster, in the order the membership service lists it."""
    return NAMED + generated_learners()
