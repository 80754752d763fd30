"""Verifying what LabDesk signs (service token assertions, deep-linking responses) the way an LMS does:
with the public keys fetched over HTTP from the key set URL the LMS registered for the tool
(`{public_url}/lti/jwks`).

Key sets are cached per URL for `jwks_cache_seconds`; a token signed with a kid the cache does not know
triggers one refetch, so a key rotation on the tool side is picked up at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt

from broker.runtime import Runtime
from lti.emulator import site
from lti.platform_keys import KeySetError, PlatformKeys


class ToolTokenError(Exception):
    """A JWT from the tool is malformed, signed with an unknown key, or carries wrong claims."""


class ToolKeysUnavailable(Exception):
    """The tool's key set could not be fetched (so nothing can be verified right now)."""


_lock = threading.Lock()
_caches: dict[tuple[int, int], PlatformKeys] = {}


def verify(rt: Runtime, token: str, audience: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The claims of a tool-signed RS256 JWT whose signature, `aud`, `exp` and `iat` check out."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise ToolTokenError(f"not a JWT: {exc}") from None
    if header.get("alg") != "RS256":
        raise ToolTokenError(f"the JWT must be signed with RS256, not {header.get('alg')!r}")
    if not header.get("kid"):
        raise ToolTokenError("the JWT header has no kid")
    public = _key(rt, site.tool_jwks_url(rt.settings), header["kid"])
    try:
        claims = jwt.decode(
            token, public, algorithms=["RS256"], audience=audience, leeway=rt.settings.lti_leeway,
            options={"require": ["exp", "iat", "iss", "aud", *required]},
        )
    except jwt.PyJWTError as exc:
        raise ToolTokenError(_reason(exc, audience)) from None
    _check_age(rt, claims)
    return claims


def replay_window(rt: Runtime) -> int:
    """How long a verified JWT stays acceptable at most; remembering a jti or nonce this long is enough."""
    return rt.settings.lti_token_max_age + 2 * rt.settings.lti_leeway


def _check_age(rt: Runtime, claims: dict[str, Any]) -> None:
    """A JWT issued longer ago than `lti_token_max_age` is refused, whatever its `exp` says: the jti and
    nonce memories only need to outlive that age to catch every replay."""
    oldest = time.time() - rt.settings.lti_token_max_age - rt.settings.lti_leeway
    if not isinstance(claims["iat"], (int, float)) or claims["iat"] < oldest:
        raise ToolTokenError(f"the JWT was issued too long ago (iat older than {rt.settings.lti_token_max_age} s)")


def _reason(error: jwt.PyJWTError, audience: str) -> str:
    """PyJWT's complaint in words that name the claim at fault."""
    if isinstance(error, jwt.InvalidAudienceError):
        return f"aud must be (or contain) {audience!r}"
    if isinstance(error, jwt.ExpiredSignatureError):
        return "the JWT has expired (exp is in the past)"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "the JWT is not valid yet (iat or nbf is in the future)"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the JWT has no {error.claim} claim"
    if isinstance(error, jwt.InvalidSignatureError):
        return "the signature does not verify with the tool's published key"
    return f"the JWT does not verify: {error}"


def _key(rt: Runtime, url: str, kid: str) -> Any:
    try:
        found = _key_sets(rt).key(url, kid)
    except KeySetError as exc:
        raise ToolKeysUnavailable(str(exc)) from None
    if found is None:
        raise ToolTokenError(f"kid {kid!r} is not in the tool's key set at {url}")
    return found


def _key_sets(rt: Runtime) -> PlatformKeys:
    """The same JWKS cache LabDesk uses for platforms' keys (one refetch on an unknown kid)."""
    settings = rt.settings
    key = (settings.jwks_cache_seconds, settings.lti_http_timeout)
    with _lock:
        return _caches.setdefault(key, PlatformKeys(*key))


def forget() -> None:
    """Drop every cached key set."""
    with _lock:
        _caches.clear()
