"""Names and Role Provisioning Services 2.0: the course roster, ten members a page unless the tool asks
for another `limit`, with the next page in the `Link` header."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request

from lti import claims as c
from lti.emulator import guard, paging, people, request_log, site, store
from lti.emulator.blueprint import emulator
from lti.emulator.errors import ServiceError

MEDIA_TYPE = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
DEFAULT_LIMIT = 10


@emulator.get("/courses/<context>/memberships")
@request_log.logged
def memberships(context: str) -> Response:
    guard.require(c.SCOPE_NRPS)
    rt = site.current_rt()
    store.ensure_seeded(rt)
    course = store.course(rt, context)
    if course is None:
        raise ServiceError(f"no course {context!r}", 404, "not_found")
    roster = [p for p in store.members(rt, context) if _has_role(p, request.args.get("role"))]
    url = site.memberships_url(rt.settings, context)
    page = paging.page(roster, url, DEFAULT_LIMIT)
    body = {
        "id": url,
        "context": {key: course[key] for key in ("id", "label", "title")},
        "members": [_member(p) for p in page.items],
    }
    return Response(json.dumps(body), 200, headers=paging.link_header(page), content_type=MEDIA_TYPE)


def _has_role(person: people.Person, role: str | None) -> bool:
    """The spec's `role` filter: a full role URI, or its short name (Learner, Instructor …)."""
    if not role:
        return True
    return any(r == role or r.rsplit("#", 1)[-1] == role for r in person.roles)


def _member(person: people.Person) -> dict[str, Any]:
    return {
        "status": "Active", "user_id": person.sub, "roles": list(person.roles), "name": person.name,
        "given_name": person.given_name, "family_name": person.family_name, "email": person.email,
    }
