"""The LTI security checks, one named negative test each, over real HTTP against the real app.

Each test plays login → launch the way a browser between an LMS and LabDesk would, with a token made to
fail exactly one check, and asserts what the person sees (a 4xx page with a reason) and what is logged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from redis import Redis
from sqlalchemy import select

from app import create_app
from broker.config import Settings
from broker.models import Lab, Membership, User
from broker.runtime import Runtime
from lti import platforms
from lti.models import Deployment
from tests.conftest import make_settings
from tests.lti.signing_platform import INSTRUCTOR, REMOVE, Browser, SigningPlatform
from tests.support.world import add_lab_catalogue
from tests.support.http import LiveServer, serve

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    return make_settings(db_url, tmp_path, public_url=f"http://127.0.0.1:{port}", default_backend="fake", emulator=False)


@pytest.fixture
def platform() -> Iterator[SigningPlatform]:
    lms = SigningPlatform()
    yield lms
    lms.close()


@pytest.fixture
def tool(rt: Runtime, port: int, platform: SigningPlatform, tmp_path: Path) -> Iterator[LiveServer]:
    platforms.add(rt, **platform.registration())
    add_lab_catalogue(rt, str(tmp_path / "fake"), "linux-desktop")
    yield from serve(create_app(rt.settings, rt), port)


def launch_with(tool: LiveServer, platform: SigningPlatform, browser: Browser | None = None, **overrides: object):
    browser = browser or Browser(tool.url)
    state, nonce = browser.login(platform)
    token = platform.sign(platform.claims(nonce, **{"target_link_uri": tool.url + "/lti/launch", **overrides}))
    return browser.launch(token, state)


def assert_refused(response, status: int, code: str, caplog: pytest.LogCaptureFixture) -> None:
    assert response.status_code == status, response.text
    assert f"<code>{code}</code>" in response.text
    assert "Traceback" not in response.text
    assert any(f"check={code}" in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_learner_launch_opens_their_lab(tool: LiveServer, platform: SigningPlatform, rt: Runtime) -> None:
    response = launch_with(tool, platform)
    assert response.status_code == 200
    assert "/labs/" in response.url and "Linux lab" in response.text
    with rt.session() as db:
        user = db.scalar(select(User).where(User.subject == "learner-7"))
        assert user is not None and user.name == "Ada Lovelace" and user.issuer == platform.issuer
        assert db.scalar(select(Membership.role).where(Membership.user_id == user.id)) == "learner"
        assert db.scalar(select(Lab.state).where(Lab.user_id == user.id)) == "requested"


def test_an_instructor_launch_opens_the_instructor_view(tool: LiveServer, platform: SigningPlatform) -> None:
    response = launch_with(tool, platform, roles=[INSTRUCTOR])
    assert response.status_code == 200 and "/teach/activities/" in response.url
    assert "Instructor view" in response.text and "Ada Lovelace" in response.text


def test_replayed_launch_is_refused_with_cookies(tool, platform, caplog) -> None:
    browser = Browser(tool.url)
    state, nonce = browser.login(platform)
    token = platform.sign(platform.claims(nonce, target_link_uri=tool.url + "/lti/launch"))
    assert browser.launch(token, state).status_code == 200
    assert_refused(browser.launch(token, state), 403, "state", caplog)


def test_replayed_launch_is_refused_without_cookies(tool, platform, caplog) -> None:
    browser = Browser(tool.url)
    state, nonce = browser.login(platform)
    token = platform.sign(platform.claims(nonce, target_link_uri=tool.url + "/lti/launch"))
    assert browser.launch(token, state).status_code == 200
    assert_refused(Browser(tool.url).launch(token, state), 403, "state", caplog)


def test_replayed_id_token_under_a_fresh_login_is_refused(tool, platform, caplog) -> None:
    first = Browser(tool.url)
    state, nonce = first.login(platform)
    token = platform.sign(platform.claims(nonce, target_link_uri=tool.url + "/lti/launch"))
    assert first.launch(token, state).status_code == 200
    attacker = Browser(tool.url)
    fresh_state, _ = attacker.login(platform)
    assert_refused(attacker.launch(token, fresh_state), 403, "nonce", caplog)


def test_state_from_another_browser_is_refused(tool, platform, caplog) -> None:
    started = Browser(tool.url)
    state, nonce = started.login(platform)
    token = platform.sign(platform.claims(nonce, target_link_uri=tool.url + "/lti/launch"))
    response = Browser(tool.url).launch(token, state)
    assert response.status_code == 403
    assert "new window" in response.text and "/lti/login?" in response.text  # the cookie-blocked fallback
    assert any("check=cookies_blocked" in r.getMessage() for r in caplog.records)
    assert started.launch(token, state).status_code == 200  # the real browser still gets in


def test_alg_none_is_refused(tool, platform, caplog) -> None:
    browser = Browser(tool.url)
    state, nonce = browser.login(platform)
    token = jwt.encode(platform.claims(nonce), None, algorithm="none", headers={"kid": platform.keys[-1][0]})
    assert_refused(browser.launch(token, state), 401, "algorithm", caplog)


def test_hs256_signed_with_the_public_key_is_refused(tool, platform, caplog) -> None:
    browser = Browser(tool.url)
    state, nonce = browser.login(platform)
    token = jwt.encode(platform.claims(nonce), "not-a-private-key", algorithm="HS256", headers={"kid": platform.keys[-1][0]})
    assert_refused(browser.launch(token, state), 401, "algorithm", caplog)


def test_signature_by_another_key_is_refused(tool, platform, caplog) -> None:
    browser = Browser(tool.url)
    state, nonce = browser.login(platform)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = platform.sign(platform.claims(nonce), kid=platform.keys[-1][0], key=forger)
    assert_refused(browser.launch(token, state), 401, "signature", caplog)


def test_unknown_kid_is_refused(tool, platform, caplog) -> None:
    browser = Browser(tool.url)
    state, nonce = browser.login(platform)
    platform.rotate(publish=False)  # signs with a key it never publishes
    assert_refused(browser.launch(platform.sign(platform.claims(nonce)), state), 401, "kid", caplog)


def test_a_key_published_after_rotation_is_accepted_after_one_refetch(tool, platform) -> None:
    assert launch_with(tool, platform).status_code == 200
    fetches = platform.jwks_fetches
    platform.rotate()
    assert launch_with(tool, platform).status_code == 200
    assert platform.jwks_fetches == fetches + 1
    assert launch_with(tool, platform).status_code == 200
    assert platform.jwks_fetches == fetches + 1  # cached from then on


def test_wrong_issuer_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, iss=platform.issuer + "/evil"), 400, "issuer", caplog)


def test_audience_without_our_client_id_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, aud="another-tool"), 400, "audience", caplog)


def test_several_audiences_without_azp_are_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, aud=["another-tool", platform.client_id]), 400, "azp", caplog)


def test_azp_naming_another_tool_is_refused(tool, platform, caplog) -> None:
    response = launch_with(tool, platform, aud=["another-tool", platform.client_id], azp="another-tool")
    assert_refused(response, 400, "azp", caplog)


def test_several_audiences_with_our_azp_are_accepted(tool, platform) -> None:
    assert launch_with(tool, platform, aud=["another-tool", platform.client_id], azp=platform.client_id).status_code == 200


def test_expired_token_is_refused(tool, platform, caplog) -> None:
    past = int(time.time()) - 3600
    assert_refused(launch_with(tool, platform, iat=past - 60, exp=past), 400, "expired", caplog)


def test_token_issued_too_long_ago_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, iat=int(time.time()) - 3600), 400, "too_old", caplog)


def test_token_without_exp_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, exp=REMOVE), 400, "claims", caplog)


def test_token_without_nonce_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, nonce=REMOVE), 403, "nonce", caplog)


def test_unknown_deployment_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, deployment_id="deploy-unknown"), 403, "deployment", caplog)


def test_a_platform_that_accepts_new_deployments_records_them(tool, platform, rt) -> None:
    platforms.add(rt, **platform.registration(), accept_new_deployments=True, replace=True)
    assert launch_with(tool, platform, deployment_id="deploy-2").status_code == 200
    with rt.session() as db:
        assert "deploy-2" in db.scalars(select(Deployment.deployment_id)).all()


def test_wrong_lti_version_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, version="1.1"), 400, "version", caplog)


def test_unhandled_message_type_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, message_type="LtiSubmissionReviewRequest"), 400, "message_type", caplog)


def test_missing_resource_link_is_refused(tool, platform, caplog) -> None:
    assert_refused(launch_with(tool, platform, resource_link=REMOVE), 400, "claims", caplog)


def test_login_from_an_unregistered_platform_is_refused(tool, caplog) -> None:
    response = Browser(tool.url).http.get(
        tool.url + "/lti/login", params=dict(iss="https://unknown.example", login_hint="x", target_link_uri=tool.url + "/lti/launch"), timeout=10
    )
    assert_refused(response, 400, "unknown_platform", caplog)


def test_login_for_another_site_is_refused(tool, platform, caplog) -> None:
    response = Browser(tool.url).http.get(
        tool.url + "/lti/login", params=dict(iss=platform.issuer, login_hint="x", target_link_uri="https://evil.example/x", client_id=platform.client_id), timeout=10
    )
    assert_refused(response, 400, "target_link_uri", caplog)


def test_launch_without_a_form_is_refused(tool, caplog) -> None:
    assert_refused(Browser(tool.url).http.post(tool.url + "/lti/launch", data={}, timeout=10), 400, "form", caplog)


def test_login_inside_an_iframe_checks_cookies_before_leaving(tool, platform) -> None:
    response = Browser(tool.url).http.get(
        tool.url + "/lti/login", headers={"Sec-Fetch-Dest": "iframe"},
        params=dict(iss=platform.issuer, login_hint="x", target_link_uri=tool.url + "/lti/launch", client_id=platform.client_id), timeout=10,
    )
    assert response.status_code == 200 and "ld_probe=1" in response.text and "Open LabDesk in a new window" in response.text
