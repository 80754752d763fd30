"""The OAuth 2.0 token endpoint the tool calls before any grade or roster request (client credentials
with a signed JWT assertion, as the LTI security framework requires), and the access tokens it issues.

Access tokens are random strings; Redis keeps only their SHA-256, with the granted scopes, for an hour.
A jti is remembered until its assertion could no longer be accepted, so an assertion works once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from flask import Response, g, jsonify, request

from broker.runtime import Runtime
from lti import claims as c
from lti.emulator import request_log, site, store, tool_keys
from lti.emulator.blueprint import emulator
from lti.emulator.errors import OAuthError, outage

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANTABLE = (c.SCOPE_LINEITEM, c.SCOPE_LINEITEM_READONLY, c.SCOPE_RESULT_READONLY, c.SCOPE_SCORE, c.SCOPE_NRPS)
TOKEN_LIFETIME = 3600


@emulator.post("/token")
@request_log.logged
def issue_token() -> Response:
    rt = site.current_rt()
    if store.outage(rt):
        raise outage()
    form = request.form
    if form.get("grant_type") != "client_credentials":
        raise OAuthError(f"grant_type must be client_credentials, got {form.get('grant_type')!r}", 400, "unsupported_grant_type")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError(f"client_assertion_type must be {ASSERTION_TYPE}", 401, "invalid_client")
    if not form.get("client_assertion"):
        raise OAuthError("client_assertion is missing", 401, "invalid_client")
    scopes = _grantable(form.get("scope", ""))
    _authenticate(rt, form["client_assertion"])
    access = _store_token(rt, scopes)
    g.emulator_scopes = scopes
    answer = jsonify(access_token=access, token_type="Bearer", expires_in=TOKEN_LIFETIME, scope=" ".join(scopes))
    answer.headers["Cache-Control"] = "no-store"
    return answer


def _grantable(requested: str) -> list[str]:
    """The requested scopes the emulator grants (unknown ones are left out, as RFC 6749 allows)."""
    scopes = [scope for scope in dict.fromkeys(requested.split()) if scope in GRANTABLE]
    if not scopes:
        raise OAuthError(f"none of the requested scopes can be granted: {requested!r}", 400, "invalid_scope")
    return scopes


def _authenticate(rt: Runtime, assertion: str) -> dict[str, Any]:
    """The assertion's claims, once signature, issuer, subject, audience, expiry and jti check out
    (RFC 7523: every failure is invalid_client)."""
    try:
        claims = tool_keys.verify(rt, assertion, site.token_url(rt.settings), required=("sub", "jti"))
    except tool_keys.ToolKeysUnavailable as exc:
        raise OAuthError(str(exc), 503, "temporarily_unavailable") from None
    except tool_keys.ToolTokenError as exc:
        raise OAuthError(f"client_assertion refused: {exc}", 401, "invalid_client") from None
    if claims["iss"] != site.CLIENT_ID or claims["sub"] != site.CLIENT_ID:
        raise OAuthError(f"client_assertion iss and sub must both be {site.CLIENT_ID!r}", 401, "invalid_client")
    if not rt.redis.set(store.key("jti", str(claims["jti"])), "1", nx=True, ex=tool_keys.replay_window(rt)):
        raise OAuthError("client_assertion refused: its jti was used before", 401, "invalid_client")
    return claims


def _digest(access: str) -> str:
    return store.key("token", hashlib.sha256(access.encode()).hexdigest())


def _store_token(rt: Runtime, scopes: list[str]) -> str:
    access = secrets.token_urlsafe(32)
    rt.redis.set(_digest(access), json.dumps({"scopes": scopes, "issued_at": time.time()}), ex=TOKEN_LIFETIME)
    store.count_token(rt)
    return access


def token_scopes(rt: Runtime, access: str) -> list[str] | None:
    """The scopes an access token grants, or None when it is unknown or expired."""
    raw = rt.redis.get(_digest(access)) if access else None
    return json.loads(raw)["scopes"] if raw else None
