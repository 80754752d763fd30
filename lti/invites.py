"""Registration invitations: Dynamic Registration only for LMSs an admin invited.

Without them, anyone who can reach `/lti/register` could register an LMS of their own and launch labs on
LabDesk's capacity. `labdesk platforms invite` prints a registration URL carrying a one-time token that the
admin pastes into the LMS; LMSs append their own parameters to it, so the token comes back with them.
`open_registration = true` lifts the requirement (closed networks, development).
"""

from __future__ import annotations

import secrets

from broker.runtime import Runtime

KEY = "labdesk:lti:invite:{token}"
TTL = 7 * 24 * 3600


def create(rt: Runtime) -> str:
    """A registration URL valid once, for a week."""
    token = secrets.token_urlsafe(18)
    rt.redis.set(KEY.format(token=token), 1, ex=TTL)
    return rt.settings.public_url.rstrip("/") + "/lti/register?invite=" + token


def valid(rt: Runtime, token: str) -> bool:
    return bool(token) and rt.redis.exists(KEY.format(token=token)) == 1


def use(rt: Runtime, token: str) -> None:
    """Spent once a registration succeeded (a failed attempt may be retried with the same URL)."""
    rt.redis.delete(KEY.format(token=token))
