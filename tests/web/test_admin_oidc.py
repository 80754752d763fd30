"""Admin sign-in with OpenID Connect against a provider double that speaks the real protocol on loopback
(tests/support/oidc_provider.py): authlib does the discovery, the code exchange with PKCE and the id_token's
signature, issuer, audience, expiry and nonce checks for real."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests
from redis import Redis
from sqlalchemy import select

from app import create_app
from broker import admins
from broker.config import Settings, load_settings
from broker.errors import ConfigError
from broker.models import Admin, AuditEvent
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.http import LiveServer, serve
from tests.test_cli import cli_env, invoke
from tests.support.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider, OidcUser


@pytest.fixture
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    yield provider
    provider.close()


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, idp: OidcProvider, port: int) -> Settings:
    return make_settings(db_url, tmp_path, public_url=f"http://127.0.0.1:{port}", admin_oidc_issuer=idp.issuer, admin_oidc_client_id=CLIENT_ID,
                         admin_oidc_client_secret=CLIENT_SECRET, admin_oidc_name="Uni Login",
                         admin_oidc_allowed=("grace@uni.example", "@staff.uni.example"))


@pytest.fixture
def server(rt: Runtime, port: int) -> Iterator[LiveServer]:
    """The app on the port its `public_url` names: the redirect URI sent to the provider is built from it."""
    yield from serve(create_app(rt.settings, rt), port)


def sign_in(server: LiveServer) -> tuple[requests.Session, requests.Response]:
    """Press "Sign in with Uni Login": LabDesk → provider → callback, following every redirect."""
    browser = requests.Session()
    page = browser.get(server.url + "/admin/login", timeout=10)
    assert "Sign in with Uni Login" in page.text
    return browser, browser.get(server.url + "/admin/oidc/login", timeout=10)


def audit_actions(rt: Runtime) -> list[tuple[str, str]]:
    with rt.session() as db:
        return [(e.action, e.actor) for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_an_allowed_user_signs_in_and_is_linked_as_an_admin(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    browser, landed = sign_in(server)
    assert landed.status_code == 200 and landed.url == server.url + "/admin/"
    assert "Signed in as <strong>grace@uni.example</strong>" in landed.text
    assert idp.state.pkce_verified == 1, "the code was exchanged with a PKCE verifier the provider checked"
    assert idp.state.redirect_uris == [rt.settings.public_url + "/admin/oidc/callback"]
    with rt.session() as db:
        row = db.scalar(select(Admin))
        assert (row.issuer, row.subject, row.email, row.password_hash) == (idp.issuer, "grace-1", "grace@uni.example", None)
        assert row.last_sign_in_at is not None
    assert audit_actions(rt) == [("admin.sign_in", "admin:grace@uni.example")]

    again, _ = sign_in(server)  # a second sign-in finds the same row, by issuer + subject
    assert again.get(server.url + "/admin/audit", timeout=10).status_code == 200
    with rt.session() as db:
        assert len(db.scalars(select(Admin)).all()) == 1


def test_a_user_of_an_allowed_domain_is_admitted_but_an_unverified_email_is_not(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    idp.state.user = OidcUser("ops-7", "ops@staff.uni.example")
    assert sign_in(server)[1].url == server.url + "/admin/"
    idp.state.user = OidcUser("ops-8", "ops2@staff.uni.example", email_verified=False)
    refused = sign_in(server)[1]
    assert refused.status_code == 403 and "is not allowed to use the LabDesk admin console" in refused.text


def test_a_user_who_is_not_allowed_is_refused_with_a_clear_page(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    idp.state.user = OidcUser("eve-1", "eve@elsewhere.example")
    browser, refused = sign_in(server)
    assert refused.status_code == 403
    assert "eve@elsewhere.example is not allowed to use the LabDesk admin console. Ask an admin to add you." in refused.text
    assert refused.headers["Cache-Control"] == "no-store"
    with rt.session() as db:
        assert db.scalar(select(Admin)) is None
    assert audit_actions(rt) == [("admin.sign_in_failed", "anonymous")]
    assert browser.get(server.url + "/admin/", timeout=10, allow_redirects=False).status_code == 302, "not signed in"


def test_an_existing_admin_signs_in_by_subject_and_a_disabled_one_does_not(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    with rt.session() as db:
        db.add(Admin(username="bob", email="bob@old.example", issuer=idp.issuer, subject="bob-1"))
        db.commit()
    idp.state.user = OidcUser("bob-1", "bob@old.example")  # not on the allow-list, but already an admin
    assert sign_in(server)[1].url == server.url + "/admin/"
    with rt.session() as db:
        admins.disable(db, "bob")
        db.commit()
    assert sign_in(server)[1].status_code == 403


def test_a_bootstrap_admin_with_the_same_verified_email_is_linked_not_duplicated(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    with rt.session() as db:
        admins.create_local(db, "root", "correct horse battery", email="grace@uni.example")
        db.commit()
    assert sign_in(server)[1].url == server.url + "/admin/"
    with rt.session() as db:
        (row,) = db.scalars(select(Admin)).all()
        assert (row.username, row.subject) == ("root", "grace-1")


@pytest.mark.parametrize(("mode", "reason"), [("other_key", "BadSignatureError"), ("tampered", "BadSignatureError"),
                                              ("wrong_nonce", "nonce")])
def test_a_token_that_fails_verification_is_refused(rt: Runtime, server: LiveServer, idp: OidcProvider, mode: str, reason: str) -> None:
    idp.state.mode = mode
    browser, refused = sign_in(server)
    assert refused.status_code == 400, refused.text
    assert "Sign-in failed: the identity provider&#39;s answer was refused" in refused.text
    assert idp.state.token_requests == 1, "the code was exchanged; the token itself was refused"
    with rt.session() as db:
        assert db.scalar(select(Admin)) is None
    assert [a for a, _ in audit_actions(rt)] == ["admin.sign_in_failed"]
    with rt.session() as db:
        detail = db.scalar(select(AuditEvent.detail))
    assert reason in detail, detail
    assert browser.get(server.url + "/admin/", timeout=10, allow_redirects=False).status_code == 302


def test_a_callback_this_browser_did_not_start_is_refused(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    victim = requests.Session()
    forged = victim.get(server.url + "/admin/oidc/callback?code=abc&state=made-up", timeout=10)
    assert forged.status_code == 400
    assert "this sign-in was not started here or has expired" in forged.text
    assert idp.state.token_requests == 0


def test_without_an_issuer_there_is_no_provider_button(rt: Runtime, tmp_path: Path) -> None:
    plain = make_settings(rt.settings.database_url, tmp_path)
    for live in serve(create_app(plain, rt)):
        page = requests.get(live.url + "/admin/login", timeout=10)
        assert page.status_code == 200 and "Sign in with" not in page.text
        assert requests.get(live.url + "/admin/oidc/login", timeout=10).status_code == 404


def test_a_provider_that_cannot_be_reached_is_said_so_on_the_sign_in_page(rt: Runtime, server: LiveServer, idp: OidcProvider) -> None:
    idp.close()
    browser, page = sign_in(server)
    assert page.status_code == 503
    assert "Sign-in with Uni Login is not possible now: the identity provider could not be reached." in page.text


def test_half_an_oidc_configuration_stops_the_start_and_the_secret_is_never_in_the_settings_repr() -> None:
    with pytest.raises(ConfigError, match="set all three or none"):
        load_settings(environ={"LABDESK_ADMIN_OIDC_ISSUER": "https://login.uni.example"})
    with pytest.raises(ConfigError, match="admin_oidc_issuer: expected an https:// URL"):
        load_settings(environ={}, overrides={"admin_oidc_issuer": "login.uni.example", "admin_oidc_client_id": "x",
                                            "admin_oidc_client_secret": "y"})
    full = load_settings(environ={"LABDESK_ADMIN_OIDC_ISSUER": "https://login.uni.example", "LABDESK_ADMIN_OIDC_CLIENT_ID": "x",
                                  "LABDESK_ADMIN_OIDC_CLIENT_SECRET": "very-secret-value",
                                  "LABDESK_ADMIN_OIDC_ALLOWED": "a@uni.example, @staff.uni.example"})
    assert full.admin_oidc_client_secret == "very-secret-value" and "very-secret-value" not in repr(full)
    assert full.admin_oidc_allowed == ("a@uni.example", "@staff.uni.example")


def test_a_provider_without_email_verified_admits_an_admin_linked_ahead_by_subject(
    rt: Runtime, server: LiveServer, idp: OidcProvider
) -> None:
    idp.state.user = OidcUser("ada-7", "grace@uni.example", email_verified=None)  # the claim is left out
    assert sign_in(server)[1].status_code == 403  # an allowed email, but nobody said it is verified
    added = invoke(cli_env(rt.settings), "admins", "add", "ada", "--oidc-subject", "ada-7")
    assert added.exit_code == 0, added.output
    assert added.stdout == f"admin ada added; they sign in with {idp.issuer} as subject ada-7\n"
    assert "password" not in added.stdout
    assert sign_in(server)[1].url == server.url + "/admin/"
    with rt.session() as db:
        (row,) = db.scalars(select(Admin)).all()
        assert (row.username, row.issuer, row.subject, row.password_hash) == ("ada", idp.issuer, "ada-7", None)
    again = invoke(cli_env(rt.settings), "admins", "add", "ada2", "--oidc-subject", "ada-7")
    assert again.exit_code != 0 and "the subject 'ada-7' is already linked to an admin" in again.output
