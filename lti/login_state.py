"""The server side of an OIDC login: the `state` and `nonce` LabDesk sent to the platform, kept in Redis
until the launch comes back, and then consumed so that no launch can be played twice.

A launch is accepted only if its `state` is in Redis (taken with GETDEL, so exactly once), its `state`
cookie is in the browser (the launch is bound to the browser that started the login), and its token's
`nonce` equals the one stored with the state and was never seen before.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass

from broker.runtime import Runtime

STATE_KEY = "labdesk:lti:state:{state}"
NONCE_KEY = "labdesk:lti:nonce:{issuer}:{nonce}"
COOKIE_PREFIX = "ld_state_"


@dataclass(frozen=True)
class PendingLogin:
    platform_id: int
    nonce: str
    login_params: dict[str, str]  # to restart the login in a new window when cookies are blocked


def begin(rt: Runtime, platform_id: int, login_params: dict[str, str]) -> tuple[str, PendingLogin]:
    state = secrets.token_urlsafe(24)
    pending = PendingLogin(platform_id, secrets.token_urlsafe(24), login_params)
    rt.redis.set(STATE_KEY.format(state=state), json.dumps(asdict(pending)), ex=rt.settings.lti_login_ttl)
    return state, pending


def peek(rt: Runtime, state: str) -> PendingLogin | None:
    raw = rt.redis.get(STATE_KEY.format(state=state))
    return PendingLogin(**json.loads(raw)) if raw else None


def consume(rt: Runtime, state: str) -> PendingLogin | None:
    """The pending login for `state`, removed in the same step: a second launch with it finds nothing."""
    raw = rt.redis.getdel(STATE_KEY.format(state=state))
    return PendingLogin(**json.loads(raw)) if raw else None


def claim_nonce(rt: Runtime, issuer: str, nonce: str) -> bool:
    """True the first time a platform's nonce is seen within the tokens' lifetime."""
    ttl = rt.settings.lti_token_max_age + 2 * rt.settings.lti_leeway
    return bool(rt.redis.set(NONCE_KEY.format(issuer=issuer, nonce=nonce), 1, nx=True, ex=ttl))


def cookie_name(state: str) -> str:
    return COOKIE_PREFIX + state
