"""Which LabDesk view an LMS role gets.

Platforms send full LIS role URIs (context, institution and system vocabularies, sometimes with a
sub-role after `#Role#SubRole`) and, in older or lax platforms, bare short names such as "Instructor".
Staff roles open the instructor view; everything else is a learner.
"""

from __future__ import annotations

# Mentor is deliberately absent: a mentor (parent, advisor) must not manage a class's labs.
INSTRUCTOR_ROLES = frozenset({"Instructor", "TeachingAssistant", "ContentDeveloper", "Administrator"})
TEST_USER = "http://purl.imsglobal.org/vocab/lti/system/person#TestUser"
_VOCABULARIES = (
    "http://purl.imsglobal.org/vocab/lis/v2/membership#",
    "http://purl.imsglobal.org/vocab/lis/v2/institution/person#",
    "http://purl.imsglobal.org/vocab/lis/v2/system/person#",
)


def short_name(role: str) -> str:
    """`…/membership#Instructor` and `…/membership/Instructor#TeachingAssistant` → their principal role;
    a bare "Instructor" stays as it is."""
    for vocabulary in _VOCABULARIES:
        if role.startswith(vocabulary):
            return role[len(vocabulary):].split("#")[0]
    if role.startswith("http://purl.imsglobal.org/vocab/lis/v2/membership/"):
        return role.rsplit("/", 1)[-1].split("#")[0]  # sub-roles: membership/Instructor#TeachingAssistant
    return role if "/" not in role and ":" not in role else ""


def view_for(roles: list[str] | tuple[str, ...]) -> str:
    """'instructor' for any staff role, else 'learner'."""
    return "instructor" if any(short_name(role) in INSTRUCTOR_ROLES for role in roles) else "learner"


def is_test_user(roles: list[str] | tuple[str, ...], payload_flag: object = None) -> bool:
    """The LMS's "student view" user: the TestUser system role, or a platform's own flag."""
    return TEST_USER in roles or payload_flag is True
