"""LTI Dynamic Registration over real HTTP: LabDesk served on loopback registers with a platform
(`registration_platform.py`) that speaks the protocol and checks what the tool sends; and the Canvas JSON.

Every failure must reach the admin as a readable 400 page (never a 500 or a trace), leave nothing
registered, and write one log line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import pytest
from urllib.parse import parse_qs, urlsplit
import requests
from redis import Redis

from app import create_app
from broker.config import Settings
from broker.runtime import Runtime
from lti import platforms
from lti.registration import RegistrationFailed, check_issuer, offered_messages
from tests.conftest import make_settings
from broker import runtime
from lti import invites
from tests.lti.registration_platform import (
    PLATFORM_CONFIGURATION,
    SCOPES,
    TOOL_CONFIGURATION,
    RegistrationPlatform,
    SilentServer,
)
from tests.support.http import LiveServer, free_port, serve

CLOSE = "(window.opener || window.parent).postMessage({subject: 'org.imsglobal.lti.close'}, '*')"
TIMEOUT = 1  # settings.lti_http_timeout for these tests


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    return make_settings(db_url, tmp_path, public_url=f"http://127.0.0.1:{port}", lti_http_timeout=TIMEOUT, emulator=False)


@pytest.fixture
def tool(rt: Runtime, port: int) -> Iterator[LiveServer]:
    yield from serve(create_app(rt.settings, rt), port)


@pytest.fixture
def lms() -> Iterator[RegistrationPlatform]:
    with RegistrationPlatform() as platform:
        yield platform


def register(tool: LiveServer, params: dict[str, str], invite: str | None = None) -> requests.Response:
    """The LMS opening LabDesk's registration URL: an invitation the admin made, plus the LMS's parameters."""
    if invite is None:
        invite = parse_qs(urlsplit(invites.create(runtime.current())).query)["invite"][0]
    return requests.get(tool.url + "/lti/register", params={"invite": invite, **params}, timeout=30)


def test_registration_without_an_invitation_is_refused(tool: LiveServer, lms: RegistrationPlatform, rt: Runtime) -> None:
    refused(register(tool, lms.start_params(), invite=""), "not valid", "labdesk platforms invite")
    assert platforms.listing(rt) == []


def test_an_invitation_registers_once(tool: LiveServer, lms: RegistrationPlatform, rt: Runtime) -> None:
    invite = parse_qs(urlsplit(invites.create(rt)).query)["invite"][0]
    assert register(tool, lms.start_params(), invite=invite).status_code == 200
    refused(register(tool, lms.start_params(), invite=invite), "already used")


def refused(response: requests.Response, *needles: str) -> None:
    """A readable 400 page naming the cause, with no trace in it."""
    assert response.status_code == 400, response.text
    assert "text/html" in response.headers["Content-Type"]
    assert "could not register" in response.text and "Traceback" not in response.text
    for needle in needles:
        assert needle in response.text, response.text
    assert "org.imsglobal.lti.close" not in response.text


# -- the whole exchange ---------------------------------------------------------------------------------
def test_registration_records_the_platform_and_closes_the_lms_frame(tool: LiveServer, lms: RegistrationPlatform, rt: Runtime) -> None:
    response = register(tool, lms.start_params())

    assert response.status_code == 200, response.text
    assert CLOSE in response.text
    assert "client-1" in response.text and "deployment-1" in response.text
    assert response.headers["Cache-Control"] == "no-store"
    [platform] = platforms.listing(rt)
    assert (platform.issuer, platform.client_id, platform.deployments) == (lms.url, "client-1", ("deployment-1",))
    assert (platform.auth_login_url, platform.auth_token_url, platform.key_set_url) == (
        lms.url + "/lti/auth", lms.url + "/lti/token", lms.url + "/lti/certs")
    assert platform.accept_new_deployments is False
    assert lms.config_requests[0]["Authorization"] == "Bearer registration-token-1"


def test_the_registration_body_describes_labdesk(tool: LiveServer, lms: RegistrationPlatform) -> None:
    assert register(tool, lms.start_params()).status_code == 200

    [body] = lms.registrations
    assert body["initiate_login_uri"] == tool.url + "/lti/login"
    assert body["redirect_uris"] == [tool.url + "/lti/launch"]
    assert body["jwks_uri"] == tool.url + "/lti/jwks"
    assert body["client_name"] == "LabDesk"
    assert requests.get(body["logo_uri"], timeout=10).headers["Content-Type"].startswith("image/svg+xml")
    assert set(body["scope"].split()) == set(SCOPES) - {"openid"}
    config = body[TOOL_CONFIGURATION]
    assert config["domain"] == tool.url.removeprefix("http://")
    assert config["target_link_uri"] == tool.url + "/lti/launch"
    picker = next(m for m in config["messages"] if m["type"] == "LtiDeepLinkingRequest")
    assert picker["placements"] == ["link_selection", "assignment_selection"]  # those offered, in our order
    assert {"sub", "name", "email"} <= set(config["claims"])


def test_registering_again_updates_the_same_platform(tool: LiveServer, rt: Runtime) -> None:
    with RegistrationPlatform(token="first") as lms:
        assert register(tool, lms.start_params()).status_code == 200
        lms.token, lms.deployment_id, lms._spent = "second", "deployment-2", False  # the admin starts again
        assert register(tool, lms.start_params()).status_code == 200

    [platform] = platforms.listing(rt)
    assert platform.deployments == ("deployment-1", "deployment-2")


def test_a_platform_that_names_no_deployment_is_accepted_for_any(tool: LiveServer, rt: Runtime) -> None:
    with RegistrationPlatform(deployment_id=None) as lms:
        response = register(tool, lms.start_params())

    assert response.status_code == 200 and "any the platform launches with" in response.text
    [platform] = platforms.listing(rt)
    assert platform.deployments == () and platform.accept_new_deployments is True


def test_the_canvas_configuration_points_at_this_labdesk(tool: LiveServer) -> None:
    response = requests.get(tool.url + "/lti/canvas.json", timeout=10)

    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    config = response.json()
    assert config["oidc_initiation_url"] == tool.url + "/lti/login"
    assert config["target_link_uri"] == tool.url + "/lti/launch"
    assert config["public_jwk_url"] == tool.url + "/lti/jwks"
    assert set(config["scopes"]) == set(SCOPES) - {"openid"}
    [canvas] = config["extensions"]
    assert (canvas["platform"], canvas["privacy_level"]) == ("canvas.instructure.com", "public")
    placements = {p["placement"]: p for p in canvas["settings"]["placements"]}
    assert set(placements) == {"link_selection", "assignment_selection"}
    assert all(p["message_type"] == "LtiDeepLinkingRequest" and p["target_link_uri"] == tool.url + "/lti/launch"
               for p in placements.values())
    assert requests.get(config["public_jwk_url"], timeout=10).json()["keys"]


# -- refusals -------------------------------------------------------------------------------------------
def test_an_issuer_that_does_not_contain_the_configuration_url_is_refused(
    tool: LiveServer, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with RegistrationPlatform(issuer="https://lms.example.edu") as lms:
        with caplog.at_level(logging.WARNING, logger="lti.registration"):
            response = register(tool, lms.start_params())

    refused(response, "https://lms.example.edu", "does not contain")
    assert lms.registrations == [] and lms.rejected == []  # nothing was even posted
    assert platforms.listing(rt) == []
    assert any("dynamic registration failed" in r.getMessage() and "does not contain" in r.getMessage() for r in caplog.records)
    assert not any(lms.token in r.getMessage() for r in caplog.records)


def test_a_registration_without_the_token_is_refused_by_the_platform(tool: LiveServer, rt: Runtime) -> None:
    with RegistrationPlatform(config_needs_token=False) as lms:
        response = register(tool, lms.start_params(token=None))

    refused(response, "registration endpoint answered HTTP 401", "missing, wrong or used registration token")
    assert lms.rejected == ["token"]
    assert platforms.listing(rt) == []


def test_a_used_registration_token_is_refused(tool: LiveServer, lms: RegistrationPlatform, rt: Runtime) -> None:
    assert register(tool, lms.start_params()).status_code == 200
    refused(register(tool, lms.start_params()), "HTTP 401")
    assert len(platforms.listing(rt)) == 1


def test_a_platform_that_never_answers_is_a_readable_400_within_the_timeout(
    tool: LiveServer, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with SilentServer() as silent, caplog.at_level(logging.WARNING, logger="lti.registration"):
        started = time.monotonic()
        response = register(tool, {"openid_configuration": silent.url + "/lti/openid-configuration", "registration_token": "t"})
        elapsed = time.monotonic() - started

    refused(response, "did not answer within 1 seconds")
    assert elapsed < 2 * TIMEOUT + 2
    assert platforms.listing(rt) == []
    assert any("did not answer" in r.getMessage() for r in caplog.records)


def test_a_registration_endpoint_that_never_answers_registers_nothing(tool: LiveServer, rt: Runtime) -> None:
    with SilentServer() as silent, RegistrationPlatform(config_overrides={"registration_endpoint": silent.url + "/register"}) as lms:
        response = register(tool, lms.start_params())

    refused(response, "registration endpoint", "did not answer")
    assert platforms.listing(rt) == []


def test_a_redirect_is_not_followed_with_the_token(tool: LiveServer, lms: RegistrationPlatform) -> None:
    response = register(tool, {"openid_configuration": lms.url + "/lti/moved", "registration_token": lms.token})

    refused(response, "redirects to " + lms.openid_configuration_url)
    assert lms.config_requests == []


def test_a_platform_nobody_listens_on_is_refused(tool: LiveServer) -> None:
    refused(register(tool, {"openid_configuration": f"http://127.0.0.1:{free_port()}/config"}), "could not be reached")


@pytest.mark.parametrize("missing", ["registration_endpoint", "jwks_uri", "authorization_endpoint", "token_endpoint",
                                     "https://purl.imsglobal.org/spec/lti-platform-configuration"])
def test_a_configuration_missing_what_launches_need_is_refused(tool: LiveServer, rt: Runtime, missing: str) -> None:
    with RegistrationPlatform(config_overrides={missing: None}) as lms:
        response = register(tool, lms.start_params())

    refused(response, missing)
    assert lms.registrations == [] and platforms.listing(rt) == []


def test_a_registration_the_platform_refuses_shows_its_reason(tool: LiveServer, rt: Runtime) -> None:
    with RegistrationPlatform(refuse_with="redirect_uris must use https") as lms:
        response = register(tool, lms.start_params())

    refused(response, "HTTP 400", "invalid_client_metadata redirect_uris must use https")
    assert platforms.listing(rt) == []


def test_a_platform_without_deep_linking_or_services_gets_a_registration_that_says_so(tool: LiveServer, rt: Runtime) -> None:
    plain = {"product_family_code": "plain", "messages_supported": [{"type": "LtiResourceLinkRequest"}]}
    with RegistrationPlatform(config_overrides={PLATFORM_CONFIGURATION: plain, "scopes_supported": ["openid"]}) as lms:
        response = register(tool, lms.start_params())

    assert response.status_code == 200, response.text
    assert "does not offer deep linking" in response.text and "grade and roster" in response.text
    [body] = lms.registrations
    assert body["scope"] == "" and [m["type"] for m in body[TOOL_CONFIGURATION]["messages"]] == ["LtiResourceLinkRequest"]
    assert platforms.listing(rt)[0].name == f"plain {lms.url.removeprefix('http://')}"


def test_opening_the_url_without_parameters_explains_what_it_is_for(tool: LiveServer) -> None:
    refused(register(tool, {}), "Dynamic Registration URL", "Add LTI Advantage")


@pytest.mark.parametrize("url", ["ftp://lms.example.edu/config", "lms.example.edu/config", "https://"])
def test_a_configuration_url_that_is_not_http_is_refused(tool: LiveServer, url: str) -> None:
    refused(register(tool, {"openid_configuration": url}), "not an http(s) URL")


# -- pure checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("issuer, url", [
    ("https://lms.example.edu", "https://lms.example.edu/mod/lti/openid-configuration.php"),
    ("https://lms.example.edu/", "https://lms.example.edu/.well-known/openid-configuration"),
    ("https://lms.example.edu/moodle", "https://lms.example.edu/moodle/mod/lti/openid-configuration.php?x=1"),
])
def test_issuer_check_accepts_a_configuration_under_the_issuer(issuer: str, url: str) -> None:
    check_issuer(issuer, url)


@pytest.mark.parametrize("issuer, url", [
    ("https://lms.example.edu", "https://lms.example.edu.evil.test/config"),  # a prefix, but not at a boundary
    ("https://lms.example.edu/moodle", "https://lms.example.edu/moodle2/config"),
    ("https://lms.example.edu", "https://lms.example.edu@evil.test/config"),
    ("https://other.example.edu", "https://lms.example.edu/config"),
    ("https://lms.example.edu?tenant=1", "https://lms.example.edu?tenant=1/config"),
    ("lms.example.edu", "lms.example.edu/config"),
])
def test_issuer_check_refuses_anything_else(issuer: str, url: str) -> None:
    with pytest.raises(RegistrationFailed):
        check_issuer(issuer, url)


def test_moodle_style_message_lists_share_one_placement_list() -> None:
    offered = offered_messages({"messages_supported": ["LtiResourceLinkRequest", "LtiDeepLinkingRequest"],
                                "placements": ["AddContentMenu"]})
    assert offered == {"LtiResourceLinkRequest": ("AddContentMenu",), "LtiDeepLinkingRequest": ("AddContentMenu",)}
