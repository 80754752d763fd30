"""The emulator's registration in LabDesk's own platform table, so LabDesk accepts its launches the same
way it accepts a real LMS's."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from broker.runtime import Runtime
from lti import platforms
from lti.emulator import signing, site, store

log = logging.getLogger(__name__)

ATTEMPTS = 3


def register_with_tool(rt: Runtime) -> platforms.PlatformInfo:
    """Register (or refresh) the emulator as a platform of this LabDesk. Idempotent; when two processes
    start together, the one whose insert loses retries and finds the other's row. Also makes the
    emulator's key and demo course now rather than during the first launch."""
    signing.key(rt.settings)
    try:
        store.ensure_seeded(rt)
    except RedisError as exc:  # Redis may come up later; the first request seeds then
        log.warning("emulator demo course not created yet: %s", exc)
    settings = rt.settings
    for attempt in range(ATTEMPTS):
        try:
            return platforms.add(
                rt, issuer=site.issuer(settings), client_id=site.CLIENT_ID, name=site.NAME,
                auth_login_url=site.auth_url(settings), auth_token_url=site.token_url(settings),
                key_set_url=site.jwks_url(settings), deployments=[site.DEPLOYMENT_ID], replace=True,
            )
        except platforms.RegistrationError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def ensure_registered(rt: Runtime) -> None:
    """Register unless a registration exists (one indexed read)."""
    if platforms.find(rt, site.issuer(rt.settings), site.CLIENT_ID) is None:
        register_with_tool(rt)
