"""Cookies an LMS iframe keeps, behind a TLS-terminating proxy; and which view each LMS role opens."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from app import create_app
from broker.config import Settings
from broker.runtime import Runtime
from lti import platforms
from lti.roles import is_test_user, view_for
from tests.conftest import make_settings

LIS = "http://purl.imsglobal.org/vocab/lis/v2/"


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(db_url, tmp_path, public_url="https://labdesk.example.edu", proxy_hops=1, emulator=False)


def test_behind_a_tls_proxy_the_login_sets_partitioned_cross_site_cookies(rt: Runtime) -> None:
    platforms.add(rt, issuer="https://lms.example.edu", client_id="c1", auth_login_url="https://lms.example.edu/auth",
                  auth_token_url="https://lms.example.edu/token", key_set_url="https://lms.example.edu/jwks", deployments=["d1"])
    client = create_app(rt.settings, rt).test_client()
    response = client.get(
        "/lti/login",
        query_string=dict(iss="https://lms.example.edu", login_hint="u1", target_link_uri="https://labdesk.example.edu/lti/launch", client_id="c1"),
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "labdesk.example.edu", "X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 302 and response.location.startswith("https://lms.example.edu/auth?")
    assert "redirect_uri=https%3A%2F%2Flabdesk.example.edu%2Flti%2Flaunch" in response.location
    state_cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("ld_state_")]
    assert state_cookies, response.headers
    for attribute in ("Secure", "SameSite=None", "Partitioned", "HttpOnly"):
        assert attribute in state_cookies[0]


def test_plain_http_development_keeps_lax_cookies(rt: Runtime, tmp_path: Path, db_url: str) -> None:
    app = create_app(make_settings(db_url, tmp_path, public_url="http://127.0.0.1:8000", emulator=False), rt)
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax" and not app.config["SESSION_COOKIE_PARTITIONED"]


@pytest.mark.parametrize(
    ("roles", "view"),
    [
        ([LIS + "membership#Instructor"], "instructor"),
        ([LIS + "membership/Instructor#TeachingAssistant"], "instructor"),
        ([LIS + "membership#ContentDeveloper"], "instructor"),
        ([LIS + "institution/person#Administrator"], "instructor"),
        (["Instructor"], "instructor"),
        ([LIS + "membership#Learner"], "learner"),
        ([LIS + "membership#Mentor"], "learner"),
        ([LIS + "system/person#None", LIS + "institution/person#None", LIS + "membership#Learner"], "learner"),
        ([], "learner"),
    ],
)
def test_each_lms_role_opens_its_view(roles: list[str], view: str) -> None:
    assert view_for(roles) == view


def test_the_lms_test_student_is_recognised() -> None:
    assert is_test_user(["http://purl.imsglobal.org/vocab/lti/system/person#TestUser"])
    assert not is_test_user([LIS + "membership#Learner"])
