"""Names and Role Provisioning Services: the course roster as the LMS has it now.

Launches only tell LabDesk about people who opened the lab; the roster also lists those who have not,
which the instructor view needs. The membership container is paged with `Link: <…>; rel="next"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.runtime import Runtime
from lti import platforms
from lti.claims import SCOPE_NRPS
from lti.models import LinkServices
from lti.service_token import PermanentServiceError, pages

MEMBERSHIPS_MEDIA = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
MAX_PAGES = 200


@dataclass(frozen=True)
class Member:
    """One person on the roster. `user_id` is their LTI subject (`users.subject` once they launch)."""

    user_id: str
    name: str
    given_name: str
    family_name: str
    email: str
    roles: tuple[str, ...]
    status: str  # "Active", "Inactive" or "Deleted"

    @classmethod
    def of(cls, entry: dict[str, Any]) -> "Member":
        return cls(
            user_id=str(entry["user_id"]),
            name=entry.get("name", ""),
            given_name=entry.get("given_name", ""),
            family_name=entry.get("family_name", ""),
            email=entry.get("email", ""),
            roles=tuple(entry.get("roles") or ()),
            status=entry.get("status", "Active"),  # the spec's default when absent
        )


def roster(rt: Runtime, activity_id: int, max_pages: int = MAX_PAGES) -> list[Member]:
    """Every member of the activity's course, across all pages (an error past `max_pages`)."""
    with rt.session() as session:
        services = session.get(LinkServices, activity_id)
        if services is None or not services.memberships_url:
            raise PermanentServiceError(f"activity {activity_id} has no LMS roster service (it was never launched with NRPS)")
        url, platform_id = services.memberships_url, services.platform_id
    platform = platforms.by_id(rt, platform_id)
    members: list[Member] = []
    for page in pages(rt, platform, {SCOPE_NRPS}, url, MEMBERSHIPS_MEDIA, max_pages):
        try:
            members += [Member.of(entry) for entry in page.get("members", [])]
        except (AttributeError, KeyError, TypeError):
            raise PermanentServiceError(f"GET {url}: not a membership container: {str(page)[:300]}") from None
    return members
