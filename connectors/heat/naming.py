"""How LabDesk names and tags its Heat stacks, and how it recognises them again.

A stack is named `<prefix>-lab-<lab id>`: unique per LabDesk installation (the prefix tells two
installations sharing a project apart), valid for Heat (a letter first, then letters, digits and '-'),
and free of learner identity (the lab id is an opaque database number). Tags mark the stack as
LabDesk's (`<prefix>`), name its lab (`<prefix>-lab-<id>`) and its course (`<prefix>-course-<tag>`),
so `list_managed` finds every stack with one tag query and an operator can filter by course.
"""

from __future__ import annotations

import re

PREFIX_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
TAG_LENGTH = 80  # Heat stores each tag in an 80-character column (stack_tag.tag)


def check_prefix(prefix: str) -> str:
    """The prefix itself, or ValueError saying what a prefix may contain."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"name_prefix {prefix!r}: a letter, then up to 31 letters, digits or '-'")
    if "-lab-" in prefix or "-course-" in prefix:  # it could equal another installation's lab or course tag
        raise ValueError(f"name_prefix {prefix!r}: must not contain '-lab-' or '-course-'")
    return prefix


def stack_name(prefix: str, lab_id: int) -> str:
    return f"{prefix}-lab-{lab_id}"


def lab_tag(prefix: str, lab_id: int) -> str:
    return f"{prefix}-lab-{lab_id}"


def course_tag(prefix: str, course: str) -> str:
    """A tag naming the course/run; characters Heat tags dislike (commas, spaces) become '-'.

    Cut to fit Heat's 80 characters: a longer tag makes the stack create fail inside Heat's database.
    """
    head = f"{prefix}-course-"
    return head + _UNSAFE.sub("-", course).strip("-")[: TAG_LENGTH - len(head)].rstrip("-")


def stack_tags(prefix: str, lab_id: int, course: str = "") -> list[str]:
    tags = [prefix, lab_tag(prefix, lab_id)]
    if course:
        tags.append(course_tag(prefix, course))
    return tags


def lab_id_of(prefix: str, tags: list[str] | None, name: str) -> int | None:
    """The lab a stack belongs to, from its lab tag (or, failing that, its name); None if not ours."""
    pattern = re.compile(rf"{re.escape(prefix)}-lab-(\d+)")
    for candidate in [*(tags or []), name]:
        found = pattern.fullmatch(candidate)
        if found:
            return int(found.group(1))
    return None
