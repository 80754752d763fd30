"""Fuzzing the URLs an LMS (or anyone on the internet) can reach: `/lti/login`, `/lti/launch`, `/lti/register`.

The real app on the test's real database (SQLite and PostgreSQL) and Redis, driven through Flask's
in-process client for speed; the platform is `SigningPlatform`, whose JWKS is served over real HTTP.
Whatever arrives (arbitrary or repeated fields, non-UTF-8 bytes, huge values, malformed JWTs, tokens
signed properly around garbage claims), the answer is never a 5xx: it is a launch, or one of the
documented refusal pages with its reason. Unhandled exceptions propagate, so a finding shows its trace.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote_from_bytes, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import example, given
from hypothesis import strategies as st
from redis import Redis
from werkzeug.datastructures import MultiDict

from app import create_app
from broker.config import Settings
from broker.runtime import Runtime
from lti import claims as C
from lti import invites, platforms
from lti.launch import LOGIN_PARAMS
from lti.roles import TEST_USER
from tests.conftest import make_settings
from tests.fuzz.conftest import fuzz_settings
from tests.lti.signing_platform import INSTRUCTOR, LEARNER, SigningPlatform
from tests.support.http import free_port
from tests.support.world import add_lab_catalogue

PUBLIC_URL = "http://localhost"  # the test client's own host: target_link_uri must point here
LAUNCH_URL = PUBLIC_URL + "/lti/launch"
HUGE = 100_000  # characters: well past every column, under the 500 kB form limit
# What a person sees for each refusal (lti/templates/lti/*.html, registration/failed.html).
REFUSAL_PAGES = (
    "Reason code: <code>",  # rejected.html: a failed check, named
    "Your browser blocked LabDesk inside this page",  # cookies_blocked.html
    "No lab is attached to this link yet",  # not_configured.html
    "LabDesk could not register with this LMS",  # registration/failed.html
    "LabDesk accepts at most 1 MB in one request",  # 413: several HUGE claims signed into one token
)

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40) | st.sampled_from(["", " ", "\x00", "a\x00b", "🖥", "%00", "http://[::1"])
HUGE_TEXT = st.sampled_from(["x" * HUGE, "🖥" * (HUGE // 4), "\x00" * 1000])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


# -- the app --------------------------------------------------------------------------------------------
@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(db_url, tmp_path, public_url=PUBLIC_URL, default_backend="fake", emulator=False)


@pytest.fixture(scope="module")
def lms() -> Iterator[SigningPlatform]:
    """A platform registered with its one deployment."""
    platform = SigningPlatform()
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def open_lms() -> Iterator[SigningPlatform]:
    """A platform whose new deployments are recorded on their first launch."""
    platform = SigningPlatform(client_id="open-client", deployment_id="open-1")
    yield platform
    platform.close()


@pytest.fixture
def app(rt: Runtime, lms: SigningPlatform, open_lms: SigningPlatform, tmp_path: Path) -> Flask:
    platforms.add(rt, **lms.registration())
    platforms.add(rt, **open_lms.registration(), accept_new_deployments=True)
    add_lab_catalogue(rt, str(tmp_path / "fake"), "linux-desktop")
    application = create_app(rt.settings, rt)
    application.config["PROPAGATE_EXCEPTIONS"] = True  # an unhandled error fails with its trace, not a 500 page
    return application


def assert_handled(response: Any) -> str:
    """Never a 5xx; a 4xx is one of the refusal pages, with no trace in it. Returns the body."""
    body = response.get_data(as_text=True)
    assert response.status_code < 500, body[:3000]
    if response.status_code >= 400:
        assert any(page in body for page in REFUSAL_PAGES), (response.status_code, body[:3000])
        assert "Traceback" not in body
    return body


def login(client: FlaskClient, platform: SigningPlatform) -> tuple[str, str]:
    """A well-formed login initiation; the (state, nonce) LabDesk sent to the platform."""
    response = client.get("/lti/login", query_string=dict(
        iss=platform.issuer, login_hint="learner-7", target_link_uri=LAUNCH_URL, client_id=platform.client_id,
    ))
    assert response.status_code == 302, response.get_data(as_text=True)
    sent = parse_qs(urlsplit(response.headers["Location"]).query)
    return sent["state"][0], sent["nonce"][0]


# -- /lti/login -----------------------------------------------------------------------------------------
ISSUER, CLIENT_ID = "<the platform's issuer>", "<its client id>"  # replaced by the real ones in the test
VALID_LOGIN = [("iss", ISSUER), ("login_hint", "learner-7"), ("target_link_uri", LAUNCH_URL), ("client_id", CLIENT_ID)]
FIELD_NAMES = st.sampled_from(LOGIN_PARAMS) | st.sampled_from(["ISS", "iss ", "", "state", "id_token"]) | TEXT
LOGIN_VALUES = st.sampled_from([ISSUER, CLIENT_ID, LAUNCH_URL, "learner-7", "deploy-1", "http://evil.test/lti/launch", ""]) | TEXT | HUGE_TEXT


@fuzz_settings(0.5)
@given(
    dropped=st.sampled_from([None, *LOGIN_PARAMS[:3], "client_id"]), extra=st.lists(st.tuples(FIELD_NAMES, LOGIN_VALUES), max_size=4),
    extra_first=st.booleans(), how=st.sampled_from(["get", "post", "raw-query", "raw-body"]), iframe=st.booleans(),
    raw=st.binary(max_size=200),  # sent percent-escaped or as the body: any bytes, invalid UTF-8 included
)
@example(dropped="iss", extra=[("iss", ISSUER)], extra_first=False, how="post", iframe=False, raw=b"")  # a form of repeated pairs
@example(dropped="target_link_uri", extra=[("target_link_uri", "http://[::1/lti/launch")], extra_first=False, how="get", iframe=False, raw=b"")
@example(dropped="iss", extra=[("iss", ISSUER + "\x00")], extra_first=False, how="get", iframe=False, raw=b"")  # PostgreSQL refuses NUL
@example(dropped=None, extra=[("login_hint", "x" * HUGE)], extra_first=True, how="get", iframe=True, raw=b"")
@example(dropped=None, extra=[], extra_first=False, how="raw-query", iframe=False, raw=b"iss=\xff\xfe&login_hint=%&target_link_uri=\x00")
def test_login_initiation_never_fails_with_a_server_error(
    app: Flask, lms: SigningPlatform, dropped: str | None, extra: list, extra_first: bool, how: str, iframe: bool, raw: bytes,
) -> None:
    real = {ISSUER: lms.issuer, CLIENT_ID: lms.client_id}
    kept = [pair for pair in VALID_LOGIN if pair[0] != dropped]
    pairs = [(name, real.get(value, value)) for name, value in (extra + kept if extra_first else kept + extra)]
    headers = {"Sec-Fetch-Dest": "iframe"} if iframe else {}
    client = app.test_client()
    if how == "get":
        response = client.get("/lti/login", query_string=pairs, headers=headers)
    elif how == "post":
        response = client.post("/lti/login", data=MultiDict(pairs), headers=headers)
    elif how == "raw-query":
        response = client.get("/lti/login?" + quote_from_bytes(raw, safe="=&"), headers=headers)
    else:
        response = client.post("/lti/login", data=raw, content_type="application/x-www-form-urlencoded", headers=headers)
    assert_handled(response)
    if response.status_code == 302:
        assert response.headers["Location"].startswith(lms.url + "/auth?")


# -- /lti/launch: malformed tokens ----------------------------------------------------------------------
def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


REAL_KID = "<the platform's key id>"  # replaced by the real one in the test
KIDS = st.sampled_from([REAL_KID, "unknown", "k" * HUGE, ""]) | JSON
HEADERS = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "none", "None", "HS256", "RS512", "ES256", ""]) | JSON},
    optional={"kid": KIDS, "typ": JSON, "crit": JSON, "jku": TEXT, "b64": JSON},
) | st.dictionaries(TEXT, JSON, max_size=3)
SEGMENT = st.binary(max_size=60).map(b64) | TEXT


def sign(platform: SigningPlatform, header: dict[str, Any], payload: Any) -> str:
    """An RS256 signature by the platform's real key over whatever header and payload, done by hand so
    that no library tidies the header first."""
    signing_input = f"{b64(json.dumps(header))}.{b64(json.dumps(payload))}"
    signature = platform.keys[-1][1].sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


@st.composite
def malformed_tokens(draw: st.DrawFn, platform: SigningPlatform, nonce: str) -> tuple[str, bool]:
    """A token that is not a well-formed, validly signed launch, or (with True) one that may be."""
    shape = draw(st.sampled_from(["text", "segments", "header", "signed-header", "payload"]))
    if shape == "text":
        return draw(TEXT | HUGE_TEXT), False
    if shape == "segments":
        return ".".join(draw(st.lists(SEGMENT, min_size=1, max_size=5))), False
    claims = platform.claims(nonce, target_link_uri=LAUNCH_URL)
    if shape == "payload":  # the real header, then a payload that is not a claims object
        header = {"alg": "RS256", "kid": platform.keys[-1][0], "typ": "JWT"}
        payload = draw(JSON | st.just(claims).map(json.dumps))
        return sign(platform, header, payload), False
    header = draw(HEADERS)
    if header.get("kid") == REAL_KID:
        header["kid"] = platform.keys[-1][0]
    if shape == "signed-header":  # RS256 with the real kid and harmless extras is a good launch
        return sign(platform, header, claims), True
    return f"{b64(json.dumps(header))}.{b64(json.dumps(claims))}.{draw(SEGMENT)}", False


@fuzz_settings(0.5)
@given(data=st.data())
def test_a_malformed_id_token_is_refused_with_a_reason(app: Flask, lms: SigningPlatform, data: st.DataObject) -> None:
    client = app.test_client()
    state, nonce = login(client, lms)
    token, may_launch = data.draw(malformed_tokens(lms, nonce), "id_token")
    form = {"id_token": token, "state": data.draw(st.sampled_from([state] * 4) | TEXT, "state")}
    if data.draw(st.booleans(), "from another browser"):  # the login's cookie is not there: cookies_blocked
        client = app.test_client()
    response = client.post("/lti/launch", data=form)
    assert_handled(response)
    assert may_launch or response.status_code >= 400, "a malformed token never launches"


# -- /lti/launch: validly signed, garbage claims --------------------------------------------------------
CLAIMS = [
    C.ROLES, C.CONTEXT, C.CUSTOM, C.RESOURCE_LINK, C.DEPLOYMENT_ID, C.MESSAGE_TYPE, C.VERSION, C.TARGET_LINK_URI,
    C.AGS, C.NRPS, C.DL_SETTINGS, C.LAUNCH_PRESENTATION, C.TOOL_PLATFORM, C.LTI + "test_user",
    "sub", "name", "given_name", "family_name", "email",
]
SECURITY_CLAIMS = ["iss", "aud", "azp", "exp", "iat", "nbf", "nonce"]
HUGE_LISTS = st.sampled_from([["x"] * 20_000, [INSTRUCTOR] * 5_000, list(range(20_000)), [{}] * 5_000])
TARGETED = {
    C.ROLES: st.sampled_from([INSTRUCTOR, {"role": INSTRUCTOR}, [INSTRUCTOR], [LEARNER, TEST_USER], [None, 1, [], {}]]),
    C.CONTEXT: st.sampled_from([["course-1"], "course-1", {"id": ["x"]}, {"id": "x" * HUGE}, {"id": None, "title": {"a": 1}}]),
    C.CUSTOM: st.sampled_from(["lab=linux-desktop", ["lab"], {"lab": ["linux-desktop"]}, {"lab": "nope", "lab_version": {}}, {"lab": "linux-desktop", "lab_version": "²"}]),
    C.RESOURCE_LINK: st.sampled_from([["link-1"], "link-1", {"id": {"x": 1}}, {"id": "y" * HUGE}, {"id": "l", "title": ["t"]}]),
    C.DEPLOYMENT_ID: st.sampled_from([None, 1, 1.5, True, [], ["deploy-1"], {"id": 1}, "", " ", "d" * 300, "new\x00one", "new-deployment"]),
    C.MESSAGE_TYPE: st.sampled_from([C.DEEP_LINKING_REQUEST, C.RESOURCE_LINK_REQUEST, ["LtiResourceLinkRequest"], {}]),
    C.DL_SETTINGS: st.fixed_dictionaries({"deep_link_return_url": JSON}, optional={
        "accept_types": JSON, "accept_multiple": JSON, "accept_lineitem": JSON, "data": JSON, "title": JSON}) | JSON,
    C.AGS: st.fixed_dictionaries({}, optional={"lineitem": JSON, "lineitems": JSON, "scope": JSON}) | JSON,
    C.NRPS: st.fixed_dictionaries({}, optional={"context_memberships_url": JSON}) | JSON,
    C.LAUNCH_PRESENTATION: st.fixed_dictionaries({}, optional={"return_url": JSON}) | JSON,
}
REMOVE = object()


def claim_values(name: str) -> st.SearchStrategy[Any]:
    return TARGETED.get(name, st.nothing()) | JSON | HUGE_TEXT | HUGE_LISTS | st.just(REMOVE)


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(CLAIMS), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 9)) == 0:  # now and then one of the checks that come before the claims
        names.append(draw(st.sampled_from(SECURITY_CLAIMS)))
    return {name: draw(claim_values(name)) for name in names}


DEEP_LINKING = {
    C.MESSAGE_TYPE: C.DEEP_LINKING_REQUEST,
    C.DL_SETTINGS: {"deep_link_return_url": "http://lms.test/return", "accept_types": ["ltiResourceLink"], "data": "opaque"},
}


def signed_launch(app: Flask, platform: SigningPlatform, changes: dict[str, Any], instructor: bool, deep_linking: bool) -> Any:
    """Login, then a launch whose token is signed by the platform's real key around the changed claims."""
    client = app.test_client()
    state, nonce = login(client, platform)
    claims = platform.claims(nonce, roles=[INSTRUCTOR] if instructor else None, target_link_uri=LAUNCH_URL)
    claims.update(DEEP_LINKING if deep_linking else {})
    for name, value in changes.items():
        if value is REMOVE:
            claims.pop(name, None)
        else:
            claims[name] = value
    token = sign(platform, {"alg": "RS256", "kid": platform.keys[-1][0], "typ": "JWT"}, claims)  # PyJWT would check iss
    return client.post("/lti/launch", data={"id_token": token, "state": state})


@fuzz_settings(0.5)
@given(changes=mutations(), open_platform=st.booleans(), instructor=st.booleans(), deep_linking=st.booleans())
@example(changes={C.CONTEXT: ["course-1"]}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.CUSTOM: "lab=linux-desktop"}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.RESOURCE_LINK: "link-1"}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.ROLES: INSTRUCTOR}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.DEPLOYMENT_ID: "d" * 300}, open_platform=True, instructor=False, deep_linking=False)
@example(changes={C.DEPLOYMENT_ID: {"id": 1}}, open_platform=True, instructor=False, deep_linking=False)
@example(changes={C.DEPLOYMENT_ID: "new\x00one"}, open_platform=True, instructor=False, deep_linking=False)
@example(changes={"sub": "s" * 300}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={"sub": "learner\x00"}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.CONTEXT: {"id": "x" * HUGE}}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.AGS: {"lineitem": {"url": 1}, "scope": "score"}}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.DL_SETTINGS: {"deep_link_return_url": ["x"]}}, open_platform=False, instructor=True, deep_linking=True)
@example(changes={C.DL_SETTINGS: ["x"]}, open_platform=False, instructor=True, deep_linking=True)
@example(changes={C.DL_SETTINGS: {"deep_link_return_url": "http://lms.test/r", "accept_types": "ltiResourceLink", "title": {}}}, open_platform=False, instructor=True, deep_linking=True)
@example(changes={C.CUSTOM: {"lab": "linux-desktop", "lab_version": "²"}}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.CUSTOM: {"lab": "linux-desktop", "lab_version": "99999999999"}}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={C.CUSTOM: {"lab": "linux\x00desktop"}}, open_platform=False, instructor=False, deep_linking=False)
@example(changes={"given_name": ["Ada"], "name": None}, open_platform=False, instructor=False, deep_linking=False)
def test_a_signed_launch_with_garbage_claims_never_fails_with_a_server_error(
    app: Flask, lms: SigningPlatform, open_lms: SigningPlatform, changes: dict[str, Any], open_platform: bool, instructor: bool,
    deep_linking: bool,
) -> None:
    response = signed_launch(app, open_lms if open_platform else lms, changes, instructor, deep_linking)
    assert_handled(response)
    if response.status_code in (302, 303):
        location = response.headers["Location"]
        assert any(page in location for page in ("/labs/", "/teach/activities/", "/lti/deep-link/")), location


# -- /lti/register --------------------------------------------------------------------------------------
INVITE, CLOSED = "<a valid invitation>", "<a URL where nothing listens>"  # made real in the test
REGISTER_NAMES = st.sampled_from(["openid_configuration", "registration_token", "invite"]) | TEXT
REGISTER_VALUES = st.sampled_from(["http://[::1", "https://[", "http://127.0.0.1:99999/x", "ftp://x", INVITE, CLOSED]) | TEXT | HUGE_TEXT


@fuzz_settings(0.3)
@given(pairs=st.lists(st.tuples(REGISTER_NAMES, REGISTER_VALUES), max_size=5))
@example(pairs=[("openid_configuration", "http://[::1/openid")])  # urlsplit raises ValueError on these
@example(pairs=[("openid_configuration", "http://[::1/openid"), ("invite", INVITE)])
def test_dynamic_registration_parameters_never_fail_with_a_server_error(app: Flask, rt: Runtime, pairs: list) -> None:
    real = {INVITE: invites.create(rt).rsplit("=", 1)[1], CLOSED: f"http://127.0.0.1:{free_port()}/openid"}
    response = app.test_client().get("/lti/register", query_string=[(name, real.get(value, value)) for name, value in pairs])
    assert response.status_code == 400, "no platform answers here: every registration fails, with its reason"
    assert_handled(response)


def test_a_megabyte_id_token_is_refused_as_not_a_token(app: Flask, lms: SigningPlatform) -> None:
    """Bigger than any HUGE value the properties draw, yet under the app's request limit: the launch says why."""
    client = app.test_client()
    state, _ = login(client, lms)
    response = client.post("/lti/launch", data={"id_token": "x" * 1_000_000, "state": state})
    assert response.status_code == 400
    assert "Reason code: <code>token</code>" in assert_handled(response)


def test_a_launch_form_over_the_request_limit_is_refused_before_it_is_read(app: Flask, lms: SigningPlatform) -> None:
    """Without a limit of the app's own, a form of any size was read whole (no reverse proxy in front)."""
    client = app.test_client()
    state, _ = login(client, lms)
    response = client.post("/lti/launch", data={"id_token": "x" * 2_000_000, "state": state})
    assert response.status_code == 413
    assert "LabDesk accepts at most 1 MB in one request. Nothing was changed." in assert_handled(response)
