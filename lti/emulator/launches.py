"""Launch hints: the opaque `lti_message_hint` the emulator puts in a login initiation URL.

A hint stands for "this user, this course, this resource link (or deep linking), shown in this frame";
the auth endpoint maps it back when the tool redirects the browser there, and checks `login_hint`
against it. Hints are random, stored in Redis for a day (a learner may reload the frame) and reusable.
Deep-linking `data` is the same idea for the return trip, but single-use.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from urllib.parse import urlencode

from broker.runtime import Runtime
from lti.claims import DEEP_LINKING_REQUEST, RESOURCE_LINK_REQUEST
from lti.emulator import site, store

HINT_TTL = 24 * 3600
DEEP_LINK_DATA_TTL = 3600


@dataclass(frozen=True)
class LaunchHint:
    sub: str
    context: str
    link_id: str  # empty for deep linking
    message_type: str
    document_target: str = "iframe"  # or "window"


def _hint_key(token: str) -> str:
    return store.key("launch", token)


def _data_key(data: str) -> str:
    return store.key("deep-link", data)


def create(rt: Runtime, hint: LaunchHint) -> str:
    token = secrets.token_urlsafe(24)
    rt.redis.set(_hint_key(token), json.dumps(asdict(hint)), ex=HINT_TTL)
    return token


def find(rt: Runtime, token: str) -> LaunchHint | None:
    raw = rt.redis.get(_hint_key(token)) if token else None
    return LaunchHint(**json.loads(raw)) if raw else None


def target_link_uri(rt: Runtime, hint: LaunchHint) -> str:
    """Where the tool should land: the link's own URL (set by deep linking), else the tool's launch URL."""
    link = store.link(rt, hint.context, hint.link_id) if hint.link_id else None
    return (link or {}).get("url") or site.tool_launch_url(rt.settings)


def login_initiation_url(rt: Runtime, hint_token: str) -> str:
    """The third-party login initiation request the course page frames (OIDC, step 1)."""
    hint = find(rt, hint_token)
    if hint is None:
        raise LookupError(f"no launch hint {hint_token!r} (expired?)")
    query = {
        "iss": site.issuer(rt.settings),
        "login_hint": hint.sub,
        "target_link_uri": target_link_uri(rt, hint),
        "lti_message_hint": hint_token,
        "client_id": site.CLIENT_ID,
        "lti_deployment_id": site.DEPLOYMENT_ID,
    }
    return f"{site.tool_login_url(rt.settings)}?{urlencode(query)}"


def start(
    rt: Runtime, sub: str, link_id: str | None = None, context: str = site.COURSE_ID,
    deep_linking: bool = False, document_target: str = "iframe",
) -> str:
    """A login initiation URL for `sub` launching `link_id` (the demo link when omitted), or deep linking.
    Tests of the tool start a launch with this."""
    message_type = DEEP_LINKING_REQUEST if deep_linking else RESOURCE_LINK_REQUEST
    link = "" if deep_linking else (link_id or store.SEED_LINK_ID)
    token = create(rt, LaunchHint(sub, context, link, message_type, document_target))
    return login_initiation_url(rt, token)


def new_deep_link_data(rt: Runtime, context: str, sub: str) -> str:
    """The `data` value of a deep-linking request; the response must bring it back unchanged."""
    data = secrets.token_urlsafe(24)
    rt.redis.set(_data_key(data), json.dumps({"context": context, "sub": sub}), ex=DEEP_LINK_DATA_TTL)
    return data


def take_deep_link_data(rt: Runtime, data: str) -> dict[str, str] | None:
    """What a deep-linking `data` value was issued for; a value works once."""
    raw = rt.redis.getdel(_data_key(data)) if data else None
    return json.loads(raw) if raw else None
