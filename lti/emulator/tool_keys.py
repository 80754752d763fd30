"""Verifying what LabDesk signs (service token assertions, deep-linking responses) the way an LMS does:
with the public keys fetched over HTTP from the key set URL the LMS registered for the tool
(`{public_url}/lti/jwks`).

Key sets are cached per URL for `jwks_cache_seconds`; a token signed with a kid the cache does not know
triggers one refetch, so a key rotation on the tool side is picked up at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
import requests

from broker.runtime import Runtime
from lti.emulator import site


class ToolTokenError(Exception):
    """A JWT from the tool is malformed, signed with an unknown key, or carries wrong claims."""


class ToolKeysUnavailable(Exception):
    """The tool's key set could not be fetched (so nothing can be verified right now)."""


@dataclass
class _Entry:
    fetched_at: float
    keys: dict[str, jwt.PyJWK]


_lock = threading.Lock()
_cache: dict[str, _Entry] = {}


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


def _key(rt: Runtime, url: str, kid: str) -> jwt.PyJWK:
    entry = _cache.get(url)
    fresh = entry is not None and time.monotonic() - entry.fetched_at < rt.settings.jwks_cache_seconds
    if not fresh or kid not in entry.keys:  # type: ignore[union-attr]
        entry = _fetch(url, rt.settings.lti_http_timeout)
    if kid not in entry.keys:
        raise ToolTokenError(f"kid {kid!r} is not in the tool's key set at {url}")
    return entry.keys[kid]


def _fetch(url: str, timeout: float) -> _Entry:
    try:
        response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
        response.raise_for_status()
        listed = response.json()["keys"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise ToolKeysUnavailable(f"could not fetch the tool's key set from {url}: {exc}") from None
    keys = {}
    for data in listed:
        try:
            if data.get("kid") and data.get("kty") == "RSA":
                keys[data["kid"]] = jwt.PyJWK(data, algorithm="RS256")
        except (jwt.PyJWTError, AttributeError):
            continue  # one odd key must not hide the good ones
    entry = _Entry(time.monotonic(), keys)
    with _lock:
        _cache[url] = entry
    return entry


def forget(url: str | None = None) -> None:
    """Drop cached key sets (all, or one URL)."""
    with _lock:
        if url is None:
            _cache.clear()
        else:
            _cache.pop(url, None)
