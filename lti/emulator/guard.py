"""What every grade and roster request passes first: the outage switch, then a bearer token from the
token endpoint that carries one of the scopes the call needs."""

from __future__ import annotations

from flask import g, request

from lti.emulator import oauth, site, store
from lti.emulator.errors import ServiceError, outage


def require(*accepted: str) -> None:
    """Refuse the request unless the service is up and its token grants one of `accepted`."""
    rt = site.current_rt()
    if store.outage(rt):
        raise outage()
    header = request.headers.get("Authorization", "")
    scheme, _, access = header.partition(" ")
    if scheme.lower() != "bearer" or not access.strip():
        raise ServiceError("an Authorization: Bearer <access token> header is required", 401, "invalid_token",
                           {"WWW-Authenticate": 'Bearer error="invalid_request"'})
    scopes = oauth.token_scopes(rt, access.strip())
    if scopes is None:
        raise ServiceError("the access token is unknown or expired", 401, "invalid_token",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    g.emulator_scopes = scopes
    if not set(accepted) & set(scopes):
        raise ServiceError(f"the access token lacks a scope this call needs: one of {', '.join(accepted)}", 403,
                           "insufficient_scope", {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(accepted)}"'})
