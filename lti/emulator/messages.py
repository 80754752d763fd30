"""The id_token an LMS sends at launch: every LTI 1.3 core claim, plus the grade (AGS), roster (NRPS) and
deep-linking claims, built from the emulator's course state.

Times are real Unix time, not `broker.clock`: the tool checks `exp` and `iat` against the real clock.
"""

from __future__ import annotations

import time
from typing import Any

from broker.runtime import Runtime
from lti import claims as c
from lti.emulator import people, site, store
from lti.emulator.launches import LaunchHint, target_link_uri

LIFETIME = 300
AGS_SCOPES = (c.SCOPE_LINEITEM, c.SCOPE_RESULT_READONLY, c.SCOPE_SCORE)
ACCEPT_TYPES = ("ltiResourceLink",)
ACCEPT_TARGETS = ("iframe", "window")


def id_token_claims(rt: Runtime, hint: LaunchHint, person: people.Person, nonce: str, data: str = "") -> dict[str, Any]:
    """The claims for the launch `hint` stands for; `data` is the deep-linking round-trip value."""
    course = store.course(rt, hint.context) or {}
    claims = {**_identity(rt, person, nonce), **_launch(rt, hint, person, course)}
    if hint.message_type == c.DEEP_LINKING_REQUEST:
        claims[c.DL_SETTINGS] = _deep_linking_settings(rt, data)
    else:
        claims.update(_resource_link(rt, hint))
    return claims


def _identity(rt: Runtime, person: people.Person, nonce: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": site.issuer(rt.settings), "aud": site.CLIENT_ID, "azp": site.CLIENT_ID, "sub": person.sub,
        "exp": now + LIFETIME, "iat": now, "nonce": nonce,
        "name": person.name, "given_name": person.given_name, "family_name": person.family_name,
        "email": person.email,
    }


def _launch(rt: Runtime, hint: LaunchHint, person: people.Person, course: dict[str, Any]) -> dict[str, Any]:
    settings = rt.settings
    return {
        c.VERSION: "1.3.0",
        c.MESSAGE_TYPE: hint.message_type,
        c.DEPLOYMENT_ID: site.DEPLOYMENT_ID,
        c.TARGET_LINK_URI: target_link_uri(rt, hint),
        c.ROLES: list(person.roles),
        c.CONTEXT: {key: course[key] for key in ("id", "label", "title", "type") if key in course},
        c.TOOL_PLATFORM: {
            "guid": site.issuer(settings), "name": site.NAME, "product_family_code": "labdesk-emulator",
            "version": "1.0",
        },
        c.LAUNCH_PRESENTATION: {
            "document_target": hint.document_target, "locale": "en",
            "return_url": site.course_page_url(settings, hint.context),
        },
        c.NRPS: {"context_memberships_url": site.memberships_url(settings, hint.context), "service_versions": ["2.0"]},
        c.AGS: {"scope": list(AGS_SCOPES), "lineitems": site.lineitems_url(settings, hint.context)},
    }


def _resource_link(rt: Runtime, hint: LaunchHint) -> dict[str, Any]:
    link = store.link(rt, hint.context, hint.link_id) or {"id": hint.link_id, "title": "", "text": "", "custom": {}}
    added: dict[str, Any] = {
        c.RESOURCE_LINK: {"id": link["id"], "title": link["title"], "description": link.get("text", "")},
        c.CUSTOM: dict(link.get("custom") or {}),
    }
    bound = [item for item in store.line_items(rt, hint.context) if item.get("resourceLinkId") == link["id"]]
    if bound:
        added[c.AGS] = {
            "scope": list(AGS_SCOPES), "lineitems": site.lineitems_url(rt.settings, hint.context),
            "lineitem": site.lineitem_url(rt.settings, hint.context, bound[0]["id"]),
        }
    return added


def _deep_linking_settings(rt: Runtime, data: str) -> dict[str, Any]:
    return {
        "deep_link_return_url": site.deep_link_return_url(rt.settings),
        "accept_types": list(ACCEPT_TYPES),
        "accept_presentation_document_targets": list(ACCEPT_TARGETS),
        "accept_multiple": True,
        "accept_lineitem": True,
        "auto_create": True,
        "title": "Add a LabDesk activity",
        "text": "",
        "data": data,
    }
