"""Calling an LMS's LTI services (grades, rosters) with an OAuth2 access token.

The token comes from the 1EdTech Security Framework's client_credentials grant: LabDesk proves who it is
with a JWT signed by its current key (`lti.keys`), which the platform checks against LabDesk's JWKS.
Tokens are cached in Redis per platform and scope set, so every web process and worker shares one token
instead of asking the LMS for a new one per score. Failures come out typed: a transient one (timeout,
connection refused, 5xx, 429) is worth retrying, a permanent one (any other 4xx) is not, and carries the
platform's own words.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Iterable, Iterator

import requests

from broker.errors import LabDeskError
from broker.runtime import Runtime
from lti.keys import signing_key
from lti.platforms import PlatformInfo

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300
TOKEN_KEY = "labdesk:lti:token:{platform}:{scopes}"
TOKEN_LOCK_KEY = "labdesk:lti:token-lock:{platform}:{scopes}"
DEFAULT_EXPIRES_IN = 3600  # when the platform does not say
EXPIRY_MARGIN = 60  # drop a cached token this long before the platform would
REASON_CHARS = 300  # how much of a platform's error body is kept

# Delete a key only while it still holds the given value: a refused token another process may already
# have replaced, or a lock that expired and is now someone else's.
_DELETE_IF_SAME = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class ServiceError(LabDeskError):
    """An LMS service call failed. `status` is the HTTP status (None when no answer came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientServiceError(ServiceError):
    """The LMS did not answer, or answered "later" (5xx, 429): the same call may work later."""


class PermanentServiceError(ServiceError):
    """The LMS refused the call for good (4xx); the message carries its reason. Retrying cannot help."""


def call(
    rt: Runtime, platform: PlatformInfo, scopes: Iterable[str], method: str, url: str, **kwargs: Any
) -> requests.Response:
    """One authorised request to a platform service, with the raised errors typed.

    A 401 means the cached token was revoked or expired early: it is dropped once and the call retried
    with a fresh token; a second refusal is permanent. Open edX answers an expired token with 403, so a
    403 gets the same one retry.
    """
    wanted = frozenset(scopes)
    token = access_token(rt, platform, wanted)
    response = _send(rt, method, url, token, **kwargs)
    if response.status_code in (401, 403):
        invalidate(rt, platform, wanted, token)
        response = _send(rt, method, url, access_token(rt, platform, wanted), **kwargs)
    return checked(response, f"{method} {url}")


def _send(rt: Runtime, method: str, url: str, token: str, **kwargs: Any) -> requests.Response:
    headers = {**kwargs.get("headers", {}), "Authorization": f"Bearer {token}"}
    return http(rt, method, url, **{**kwargs, "headers": headers})  # kwargs stay intact for a retry


def http(rt: Runtime, method: str, url: str, **kwargs: Any) -> requests.Response:
    """A request with LabDesk's timeout; a platform that cannot be reached is a transient error."""
    try:
        return requests.request(method, url, timeout=rt.settings.lti_http_timeout, **kwargs)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientServiceError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:  # a malformed URL and the like: retrying cannot help
        raise PermanentServiceError(f"{method} {url}: {exc}") from exc


def checked(response: requests.Response, what: str) -> requests.Response:
    """The response if it succeeded; else the typed error, with the platform's reason (truncated)."""
    status = response.status_code
    if status < 400:
        return response
    reason = f"{what}: {status} {response.reason}: {response.text.strip()[:REASON_CHARS]}"
    if status >= 500 or status == 429:
        raise TransientServiceError(reason, status)
    raise PermanentServiceError(reason, status)


def access_token(rt: Runtime, platform: PlatformInfo, scopes: Iterable[str]) -> str:
    """A bearer token for these scopes: the shared cached one, else a new one from the platform.

    A short Redis lock lets one process fetch while the others wait for its token, so a burst of
    deliveries after a restart costs the LMS one token request, not one per worker.
    """
    wanted = frozenset(scopes)
    key, lock = _keys(platform, wanted)
    cached = _cached(rt, key)
    if cached:
        return cached
    wait = rt.settings.lti_http_timeout + 1
    owner = secrets.token_hex(8)
    if rt.redis.set(lock, owner, nx=True, ex=wait):
        try:
            return _fetch_and_share(rt, platform, wanted, key)
        finally:
            rt.redis.eval(_DELETE_IF_SAME, 1, lock, owner)
    return _await_other(rt, key, wait) or _fetch_and_share(rt, platform, wanted, key)


def _fetch_and_share(rt: Runtime, platform: PlatformInfo, scopes: frozenset[str], key: str) -> str:
    token, lifetime = _fetch(rt, platform, scopes)
    if lifetime > 0:
        rt.redis.set(key, rt.vault.seal({"token": token}), ex=lifetime)
    return token


def invalidate(rt: Runtime, platform: PlatformInfo, scopes: Iterable[str], token: str) -> None:
    """Forget the cached token if it is still `token` (the one a service just refused)."""
    key, _ = _keys(platform, frozenset(scopes))
    raw = rt.redis.get(key)
    if raw is not None and rt.vault.open(raw).get("token") == token:
        rt.redis.eval(_DELETE_IF_SAME, 1, key, raw)


def _keys(platform: PlatformInfo, scopes: frozenset[str]) -> tuple[str, str]:
    digest = hashlib.sha256(" ".join(sorted(scopes)).encode()).hexdigest()[:16]
    return TOKEN_KEY.format(platform=platform.id, scopes=digest), TOKEN_LOCK_KEY.format(platform=platform.id, scopes=digest)


def _cached(rt: Runtime, key: str) -> str | None:
    raw = rt.redis.get(key)
    return rt.vault.open(raw).get("token") if raw is not None else None


def _await_other(rt: Runtime, key: str, seconds: float) -> str | None:
    """Wait for the process holding the lock to publish its token (None: it failed or took too long)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        token = _cached(rt, key)
        if token:
            return token
    return None


def _fetch(rt: Runtime, platform: PlatformInfo, scopes: frozenset[str]) -> tuple[str, int]:
    """Ask the platform's token endpoint; returns the token and how long it may be cached (seconds)."""
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(rt, platform),
        "scope": " ".join(sorted(scopes)),
    }
    url = platform.auth_token_url
    response = checked(http(rt, "POST", url, data=form, headers={"Accept": "application/json"}), f"POST {url}")
    try:
        body = response.json()
        token = str(body["access_token"])
        expires_in = int(body.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (ValueError, KeyError, TypeError):
        raise PermanentServiceError(f"POST {url}: no access token in the answer: {response.text[:REASON_CHARS]}") from None
    return token, expires_in - min(EXPIRY_MARGIN, expires_in // 2)


def client_assertion(rt: Runtime, platform: PlatformInfo) -> str:
    """The signed JWT that authenticates LabDesk to the token endpoint (1EdTech Security Framework 4.1)."""
    now = int(time.time())  # real time: the LMS checks iat/exp against its own clock
    claims = {
        "iss": platform.client_id,
        "sub": platform.client_id,
        "aud": platform.auth_audience or platform.auth_token_url,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(24),
    }
    return signing_key(rt).sign(claims)



def pages(
    rt: Runtime, platform: PlatformInfo, scopes: Iterable[str], url: str, accept: str, max_pages: int, **params: str
) -> Iterator[Any]:
    """Each page's JSON of a paged service, following `Link: <…>; rel="next"` to the end.

    `max_pages` bounds a platform that pages forever (or links a page to itself): going past it is an
    error rather than a silently cut list.
    """
    seen: set[str] = set()
    next_url: str | None = url
    first = True
    while next_url:
        if len(seen) >= max_pages or next_url in seen:
            raise PermanentServiceError(f"GET {url}: more than {len(seen)} pages (or a page linking back); gave up")
        seen.add(next_url)
        response = call(rt, platform, scopes, "GET", next_url, headers={"Accept": accept}, params=params if first else None)
        first = False
        yield _json(response, f"GET {next_url}")
        next_url = response.links.get("next", {}).get("url")


def _json(response: requests.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise PermanentServiceError(f"{what}: the answer is not JSON: {response.text[:REASON_CHARS]}") from None
