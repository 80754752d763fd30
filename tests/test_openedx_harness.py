"""The Open edX platform harness, checked against a fake tool written here, so no LabDesk code is involved.

If these pass, a LabDesk end-to-end test that fails against `OpenEdxPlatform` points at LabDesk, not
at the harness: the launch reaches a tool that verifies it the way the spec says, and Open edX's
token endpoint tells a tool whose key it can fetch from one whose key it cannot.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlencode

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, make_response, redirect, request

from tests.support.http import LiveServer
from tests.support.openedx_platform import (
    ROLE_INSTRUCTOR,
    LaunchRequest,
    OpenEdxPlatform,
    OpenEdxPlatformError,
    openedx_missing,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(openedx_missing() is not None, reason=str(openedx_missing())),
]

CLIENT_ID = "openedx-client"
DEPLOYMENT_ID = "1"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership#"
MEDIA_SCORE = "application/vnd.ims.lis.v1.score+json"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class SigningKey:
    """An RSA key with a kid; the tool publishes the public half at its JWKS URL."""

    private: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    kid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}


@dataclass
class FakeTool:
    """A minimal, strict LTI 1.3 tool: OIDC redirect, state cookie, id_token checked against the platform."""

    key: SigningKey = field(default_factory=SigningKey)
    platform: OpenEdxPlatform | None = None
    base_url: str = ""
    logins: list[dict[str, str]] = field(default_factory=list)
    launches: list[dict[str, Any]] = field(default_factory=list)
    nonces: dict[str, str] = field(default_factory=dict)

    def app(self) -> Flask:
        app = Flask("fake_tool")
        app.add_url_rule("/login", view_func=self.login, methods=["GET", "POST"])
        app.add_url_rule("/launch", view_func=self.launch, methods=["POST"])
        app.add_url_rule("/landed", view_func=self.landed)
        app.add_url_rule("/jwks", view_func=lambda: jsonify({"keys": [self.key.public_jwk()]}))
        return app

    def login(self) -> Response:
        """Third-party initiated login: answer with a redirect to the platform's auth URL, set the state cookie."""
        assert self.platform is not None
        params = dict(request.values.items())
        self.logins.append(params)
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.nonces[state] = nonce
        query = {"scope": "openid", "response_type": "id_token", "response_mode": "form_post", "prompt": "none",
                 "client_id": params["client_id"], "redirect_uri": f"{self.base_url}/launch",
                 "login_hint": params["login_hint"], "lti_message_hint": params["lti_message_hint"],
                 "state": state, "nonce": nonce}
        response = redirect(f"{self.platform.auth_login_url}?{urlencode(query)}")
        response.set_cookie("fake_tool_state", state, httponly=True)
        return response

    def launch(self) -> Response:
        """Verify state against the cookie and the id_token against the platform's JWKS, then land."""
        assert self.platform is not None
        state = request.form["state"]
        if state != request.cookies.get("fake_tool_state"):
            return make_response("state does not match the cookie", 400)
        signing_key = jwt.PyJWKClient(self.platform.jwks_url).get_signing_key_from_jwt(request.form["id_token"])
        claims = jwt.decode(request.form["id_token"], signing_key.key, algorithms=["RS256"],
                            audience=CLIENT_ID, issuer=self.platform.issuer)
        if claims.get("nonce") != self.nonces.pop(state, None):
            return make_response("nonce does not match", 400)
        self.launches.append(claims)
        return redirect("/landed")

    def landed(self) -> Response:
        return jsonify({"sub": self.launches[-1]["sub"] if self.launches else None})

    def client_assertion(self, token_url: str, key: SigningKey | None = None) -> str:
        """The client_credentials JWT of the IMS security framework, signed by `key` (ours by default)."""
        key = key or self.key
        now = int(time.time())
        claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": token_url, "iat": now, "exp": now + 300,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})


@pytest.fixture(scope="module")
def tool() -> Iterator[FakeTool]:
    fake = FakeTool()
    server = LiveServer(fake.app())
    fake.base_url = server.url
    try:
        yield fake
    finally:
        server.close()


@pytest.fixture(scope="module")
def platform(tool: FakeTool) -> Iterator[OpenEdxPlatform]:
    with OpenEdxPlatform(f"{tool.base_url}/login", f"{tool.base_url}/launch", f"{tool.base_url}/jwks",
                         client_id=CLIENT_ID, deployment_id=DEPLOYMENT_ID) as running:
        tool.platform = running
        yield running


def request_token(platform: OpenEdxPlatform, assertion: str, scopes: list[str]) -> requests.Response:
    return requests.post(platform.token_url, timeout=30, data={
        "grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion, "scope": " ".join(scopes)})


def post_score(platform: OpenEdxPlatform, token: str | None, score: dict[str, Any],
               content_type: str = MEDIA_SCORE) -> requests.Response:
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    return requests.post(f"{platform.lineitem_url}/scores", json=score, headers=headers, timeout=10)


def a_score(user_id: str, given: float = 7) -> dict[str, Any]:
    return {"userId": user_id, "scoreGiven": given, "scoreMaximum": 10, "activityProgress": "Completed",
            "gradingProgress": "FullyGraded", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}


def test_launch_reaches_the_tool_with_open_edx_claims(platform: OpenEdxPlatform, tool: FakeTool) -> None:
    session = requests.Session()
    response = platform.launch(session, user_id="learner-1", resource_link_id="rl-1", context_id="course-1",
                               extra_claims={"https://example.invalid/claim/x": "y"})

    assert response.status_code == 200, response.text
    assert response.url == f"{tool.base_url}/landed" and response.json() == {"sub": "learner-1"}
    claims = tool.launches[-1]
    assert claims["iss"] == platform.issuer and claims["aud"] == CLIENT_ID and claims["azp"] == CLIENT_ID
    assert claims[CLAIM + "deployment_id"] == DEPLOYMENT_ID
    assert claims[CLAIM + "message_type"] == "LtiResourceLinkRequest" and claims[CLAIM + "version"] == "1.3.0"
    assert MEMBERSHIP + "Learner" in claims[CLAIM + "roles"]
    assert claims[CLAIM + "resource_link"] == {"id": "rl-1"} and claims[CLAIM + "context"]["id"] == "course-1"
    assert claims[CLAIM + "target_link_uri"] == f"{tool.base_url}/launch"
    assert claims[AGS_CLAIM]["lineitem"] == platform.lineitem_url
    assert claims[AGS_CLAIM]["lineitems"] == platform.lineitems_url
    assert SCOPE_SCORE in claims[AGS_CLAIM]["scope"]
    assert claims["https://example.invalid/claim/x"] == "y"
    login = tool.logins[-1]
    assert login["iss"] == platform.issuer and login["client_id"] == CLIENT_ID
    assert login["lti_deployment_id"] == DEPLOYMENT_ID and login["login_hint"] == "learner-1"


def test_instructor_role_and_explicit_roles(platform: OpenEdxPlatform, tool: FakeTool) -> None:
    platform.launch(requests.Session(), user_id="teacher-1", resource_link_id="rl-1", role=ROLE_INSTRUCTOR)
    assert {MEMBERSHIP + "Instructor", MEMBERSHIP + "Administrator"} <= set(tool.launches[-1][CLAIM + "roles"])

    platform.launch(requests.Session(), user_id="ta-1", resource_link_id="rl-1", roles=[MEMBERSHIP + "Mentor"])
    assert tool.launches[-1][CLAIM + "roles"] == [MEMBERSHIP + "Mentor"]


def test_auth_request_is_refused_for_an_unregistered_redirect_uri(platform: OpenEdxPlatform) -> None:
    session = requests.Session()
    login = session.get(platform.login_initiation_url(LaunchRequest("learner-2", "rl-2")), allow_redirects=False, timeout=10)
    forged = login.headers["Location"].replace("%2Flaunch", "%2Felsewhere")
    assert session.get(forged, timeout=10).status_code == 400


def test_token_from_the_tool_key_lets_the_tool_post_a_score(platform: OpenEdxPlatform, tool: FakeTool) -> None:
    response = request_token(platform, tool.client_assertion(platform.token_url), [SCOPE_SCORE])

    assert response.status_code == 200, response.text
    grant = response.json()
    assert grant["token_type"] == "bearer" and grant["expires_in"] == 3600 and grant["scope"] == SCOPE_SCORE
    scored = post_score(platform, grant["access_token"], a_score("learner-1"))
    assert scored.status_code == 201, scored.text
    assert scored.headers["Content-Type"].startswith(MEDIA_SCORE)
    assert {"lineitem": platform.lineitem_url, "score": scored.json()} in platform.scores()


def test_token_request_signed_with_a_key_the_tool_does_not_publish_is_refused(
        platform: OpenEdxPlatform, tool: FakeTool) -> None:
    response = request_token(platform, tool.client_assertion(platform.token_url, key=SigningKey()), [SCOPE_SCORE])

    assert response.status_code == 400 and response.json() == {"error": "invalid_client"}
    assert platform.token_requests()[-1]["error"] == "invalid_client"


def test_scores_need_a_bearer_token_with_the_score_scope(platform: OpenEdxPlatform, tool: FakeTool) -> None:
    read_only = request_token(platform, tool.client_assertion(platform.token_url), [SCOPE_LINEITEM_READONLY])
    token = read_only.json()["access_token"]

    assert post_score(platform, None, a_score("learner-3")).status_code == 403
    assert post_score(platform, token, a_score("learner-3")).status_code == 403
    scorer = request_token(platform, tool.client_assertion(platform.token_url), [SCOPE_SCORE]).json()["access_token"]
    assert post_score(platform, scorer, a_score("learner-3"), content_type="application/json").status_code == 415
    lineitems = requests.get(platform.lineitems_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert lineitems.status_code == 200 and lineitems.json()[0]["id"] == platform.lineitem_url


def test_a_launch_the_tool_does_not_redirect_is_reported(platform: OpenEdxPlatform, tool: FakeTool) -> None:
    broken = OpenEdxPlatform(f"{tool.base_url}/landed", f"{tool.base_url}/launch", f"{tool.base_url}/jwks")
    with broken, pytest.raises(OpenEdxPlatformError, match="not a redirect"):
        broken.launch(requests.Session(), user_id="learner-4", resource_link_id="rl-4")
