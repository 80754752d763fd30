"""The service token (1EdTech Security Framework client_credentials grant with a signed JWT assertion) and
calls to LMS services, against the test LMS over real HTTP: what the assertion says, the token shared in
Redis, the one retry after a 401, and which failures are worth retrying.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import jwt
import pytest
from redis import Redis

from broker.runtime import Runtime
from lti import platforms
from lti.keys import signing_key
from lti.platforms import PlatformInfo
from lti.service_token import (
    ASSERTION_TYPE,
    PermanentServiceError,
    TransientServiceError,
    access_token,
    call,
)
from tests.lti.platform_double import SCOPE_LINEITEM, SCOPE_NRPS, SCOPE_SCORE, PlatformDouble, connect, serve_platform
from tests.support.world import World

CTX = "course-fake"
AGS = {SCOPE_SCORE, SCOPE_LINEITEM}


@pytest.fixture
def double(rt: Runtime) -> Iterator[PlatformDouble]:
    yield from serve_platform(rt)


@pytest.fixture
def platform(rt: Runtime, world: World, double: PlatformDouble) -> PlatformInfo:
    return platforms.by_id(rt, connect(rt, world.activity_id, CTX, double))


def test_the_client_assertion_says_what_the_security_framework_asks(
    rt: Runtime, platform: PlatformInfo, double: PlatformDouble
) -> None:
    token = access_token(rt, platform, AGS)
    assert token  # the double issues one only for an assertion it verified against LabDesk's JWKS

    (form,) = double.token_forms
    assert (form["grant_type"], form["client_assertion_type"]) == ("client_credentials", ASSERTION_TYPE)
    assert form["scope"] == f"{SCOPE_LINEITEM} {SCOPE_SCORE}"  # space-separated
    (claims,) = double.assertions
    assert claims["iss"] == claims["sub"] == platform.client_id
    assert claims["aud"] == platform.auth_token_url
    assert claims["exp"] - claims["iat"] == 300 and abs(claims["iat"] - time.time()) < 5
    assert jwt.get_unverified_header(form["client_assertion"])["kid"] == signing_key(rt).kid

    access_token(rt, platform, {SCOPE_NRPS})  # another scope set: another token, another assertion
    assert len({c["jti"] for c in double.assertions}) == 2


def test_the_assertion_is_addressed_to_auth_audience_when_the_platform_has_one(rt: Runtime, world: World) -> None:
    audience = "https://lms.example/login/oauth2/token"
    for double in serve_platform(rt, audience=audience):
        info = platforms.by_id(rt, connect(rt, world.activity_id, CTX, double, auth_audience=audience))
        assert access_token(rt, info, AGS)
        assert double.assertions[0]["aud"] == audience


def test_the_token_is_cached_in_redis_for_every_process_until_shortly_before_it_expires(
    rt: Runtime, platform: PlatformInfo, double: PlatformDouble
) -> None:
    token = access_token(rt, platform, AGS)
    (key,) = rt.redis.keys("labdesk:lti:token:*")
    assert 3500 < rt.redis.ttl(key) <= 3540  # expires_in 3600 minus a minute's margin
    assert token.encode() not in rt.redis.get(key)  # sealed at rest, like every other credential

    other_process = Runtime(rt.settings, redis=Redis.from_url(rt.settings.redis_url))
    assert access_token(other_process, platform, list(AGS)) == token
    assert double.token_requests == 1


def test_a_short_lived_token_is_fetched_again_once_it_expires(rt: Runtime, platform: PlatformInfo, double: PlatformDouble) -> None:
    double.token_lifetime = 2  # cached for 1 s
    first = access_token(rt, platform, AGS)
    time.sleep(1.2)
    assert access_token(rt, platform, AGS) != first
    assert double.token_requests == 2


def test_a_401_drops_the_token_and_retries_once(rt: Runtime, platform: PlatformInfo, double: PlatformDouble) -> None:
    assert call(rt, platform, AGS, "GET", double.url + "/status/200").status_code == 200
    double.revoke_tokens()
    assert call(rt, platform, AGS, "GET", double.url + "/status/200").status_code == 200
    assert (double.unauthorized, double.token_requests) == (1, 2)

    with pytest.raises(PermanentServiceError) as refused:  # still 401 with a fresh token: no loop
        call(rt, platform, AGS, "GET", double.url + "/status/401")
    assert refused.value.status == 401
    assert double.token_requests == 3


@pytest.mark.parametrize(("status", "kind"), [
    (500, TransientServiceError), (502, TransientServiceError), (503, TransientServiceError), (429, TransientServiceError),
    (400, PermanentServiceError), (403, PermanentServiceError), (404, PermanentServiceError), (409, PermanentServiceError),
    (422, PermanentServiceError),
])
def test_failures_are_typed_and_carry_the_platforms_words(
    rt: Runtime, platform: PlatformInfo, double: PlatformDouble, status: int, kind: type[Exception]
) -> None:
    with pytest.raises(kind) as failed:
        call(rt, platform, AGS, "POST", f"{double.url}/status/{status}", params={"body": "the LMS says no " + "x" * 1000})
    message = str(failed.value)
    assert f"/status/{status}" in message and f": {status} " in message and "the LMS says no" in message
    assert message.count("x") < 350  # truncated
    assert failed.value.status == status  # type: ignore[attr-defined]


def test_a_platform_too_slow_or_unreachable_is_transient(rt: Runtime, platform: PlatformInfo, double: PlatformDouble) -> None:
    impatient = Runtime(dataclasses.replace(rt.settings, lti_http_timeout=1), redis=rt.redis)
    with pytest.raises(TransientServiceError, match="Timeout"):
        call(impatient, platform, AGS, "GET", double.url + "/status/200?sleep=2")

    unreachable = dataclasses.replace(platform, id=platform.id + 1000, auth_token_url="http://127.0.0.1:1/token")
    with pytest.raises(TransientServiceError, match="ConnectionError"):
        access_token(rt, unreachable, AGS)


def test_a_token_endpoint_that_refuses_the_client_is_permanent(rt: Runtime, platform: PlatformInfo, double: PlatformDouble) -> None:
    stranger = dataclasses.replace(platform, client_id="not-the-registered-client")
    with pytest.raises(PermanentServiceError, match="invalid_client") as refused:
        access_token(rt, stranger, AGS)
    assert refused.value.status == 401
    assert rt.redis.keys("labdesk:lti:token:*") == []


def test_an_lms_that_is_down_gives_a_transient_error(rt: Runtime, platform: PlatformInfo, double: PlatformDouble) -> None:
    double.down = True
    with pytest.raises(TransientServiceError, match="503"):
        access_token(rt, platform, AGS)
