"""Hands a validated deep-linking launch to the lab picker across requests.

The launch request validates the id_token once; the picker (GET) and its submission (POST) then find the
launch in Redis by an unguessable token that is also bound to the browser's session.
"""

from __future__ import annotations

import dataclasses
import json
import secrets

from broker.runtime import Runtime
from lti.claims import DeepLinkSettings, Launch

KEY = "labdesk:lti:deeplink:{token}"
TTL = 3600


def save(rt: Runtime, launch: Launch) -> str:
    token = secrets.token_urlsafe(24)
    rt.redis.set(KEY.format(token=token), json.dumps(dataclasses.asdict(launch)), ex=TTL)
    return token


def load(rt: Runtime, token: str) -> Launch | None:
    raw = rt.redis.get(KEY.format(token=token))
    if raw is None:
        return None
    data = json.loads(raw)
    data["roles"] = tuple(data["roles"])
    data["ags_scopes"] = tuple(data["ags_scopes"])
    if data.get("deep_link"):
        data["deep_link"] = DeepLinkSettings(**{**data["deep_link"], "accept_types": tuple(data["deep_link"]["accept_types"])})
    return Launch(**data)


def forget(rt: Runtime, token: str) -> bool:
    """A picker answers once: the platform must not receive two responses for one request. True only for
    the one caller that removed the launch, however many submissions race."""
    return bool(rt.redis.delete(KEY.format(token=token)))
