"""The console's Platforms section over real HTTP: admins only (and CSRF) on every page and action; adding
and editing refuse exactly what `labdesk platforms add` refuses, beside the field at fault, keeping what was
typed and storing nothing; deployments are allowed and dropped; removal asks first and then stops logins
from the LMS while its courses stay; registration invitations work once; every change is audited."""

from __future__ import annotations

import html
import re
from typing import Callable
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import select

from broker.models import Activity, AuditEvent, Course, ScoreOutbox
from broker.runtime import Runtime
from lti import invites, platforms
from lti.cli import OPTIONS
from lti.models import LinkServices
from tests.support.admin_browser import Browser, signed_in_root
from tests.support.http import Learner, LiveServer
from tests.support.world import make_world

LMS = "https://lms.example.edu"
FORM = {
    "name": "Example Moodle", "issuer": LMS, "client_id": "client-1", "auth_login_url": LMS + "/mod/lti/auth.php",
    "auth_token_url": LMS + "/mod/lti/token.php", "key_set_url": LMS + "/mod/lti/certs.php", "auth_audience": "",
    "deployments": "",
}


@pytest.fixture
def admin(rt: Runtime, server: LiveServer) -> Browser:
    """A browser signed in as the local admin `root`."""
    return signed_in_root(rt, server.url)


def add(browser: Browser, **fields: str) -> requests.Response:
    return browser.post("/admin/platforms", data={**FORM, **fields, "csrf_token": browser.token("/admin/platforms")})


def post(browser: Browser, path: str, **fields: str) -> requests.Response:
    return browser.post(path, data={**fields, "csrf_token": browser.token("/admin/platforms")})


def registered(rt: Runtime) -> list[platforms.PlatformInfo]:
    return platforms.listing(rt)


def audit_rows(rt: Runtime) -> list[tuple[str, str, str, str, str]]:
    with rt.session() as db:
        return [(e.action, e.actor, e.target, e.address, e.detail) for e in
                db.scalars(select(AuditEvent).where(AuditEvent.action.startswith("platform.")).order_by(AuditEvent.id))]


def row_of(page: str, platform_id: int) -> str:
    found = re.search(rf'<tr id="platform-{platform_id}">(.*?)</tr>', page, re.S)
    assert found, page
    return found.group(1)


def field_error(page: str, field: str) -> str:
    """The reason shown right under a field, which must be marked invalid and point at it."""
    assert re.search(rf'id="{field}" name="{field}"[^>]*aria-invalid="true" aria-describedby="{field}-error"', page), page
    found = re.search(rf'<span class="error" id="{field}-error" role="alert">(.*?)</span>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


def typed_value(page: str, field: str) -> str:
    found = re.search(rf'id="{field}" name="{field}" value="([^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


def login(person: Learner, rt: Runtime, client_id: str = "client-1") -> requests.Response:
    """An LMS starting an LTI login (third-party initiated) for this registration."""
    query = urlencode({"iss": LMS, "client_id": client_id, "login_hint": "u1",
                       "target_link_uri": rt.settings.public_url.rstrip("/") + "/lti/launch"})
    return person.get("/lti/login?" + query, allow_redirects=False)


# -- who may --------------------------------------------------------------------------------------------
def test_platforms_need_a_signed_in_admin(rt: Runtime, server: LiveServer, learner: Callable[[str], Learner]) -> None:
    info = platforms.add(rt, LMS, "client-1", LMS + "/auth", LMS + "/token", LMS + "/keys")
    nobody = Browser(server.url)
    for path in ("/admin/platforms", f"/admin/platforms/{info.id}", f"/admin/platforms/{info.id}/remove"):
        page = nobody.get(path, allow_redirects=False)
        assert page.status_code == 302 and page.headers["Location"].startswith(f"/admin/login?next={path}"), path
    actions = ("/admin/platforms", "/admin/platforms/invite", f"/admin/platforms/{info.id}",
               f"/admin/platforms/{info.id}/deployments", f"/admin/platforms/{info.id}/deployments/remove",
               f"/admin/platforms/{info.id}/remove")
    for person in (nobody, learner("Ada")):
        token = Browser.token(person)  # type: ignore[arg-type]  (a valid token of its session, from the sign-in form)
        for path in actions:
            refused = person.post(path, data={**FORM, "issuer": LMS + "/other", "deployment_id": "d-9", "csrf_token": token},
                                  allow_redirects=False)
            assert refused.status_code == 403 and "Admins only" in refused.text, path
    assert registered(rt) == [info] and audit_rows(rt) == []


def test_every_platform_post_needs_the_csrf_token(rt: Runtime, admin: Browser) -> None:
    info = platforms.add(rt, LMS, "client-1", LMS + "/auth", LMS + "/token", LMS + "/keys", deployments=["d-1"])
    for path in ("/admin/platforms", "/admin/platforms/invite", f"/admin/platforms/{info.id}",
                 f"/admin/platforms/{info.id}/deployments", f"/admin/platforms/{info.id}/deployments/remove",
                 f"/admin/platforms/{info.id}/remove"):
        refused = admin.post(path, data={**FORM, "client_id": "client-2", "deployment_id": "d-1"})
        assert refused.status_code == 400 and "This form has expired" in refused.text, path
    assert registered(rt) == [info] and audit_rows(rt) == []


# -- adding ---------------------------------------------------------------------------------------------
def test_an_added_platform_is_listed_accepts_logins_and_is_audited(rt: Runtime, admin: Browser) -> None:
    empty = admin.get("/admin/platforms")
    assert "No platforms registered yet" in empty.text

    added = add(admin, deployments="d-1\n\n  d-2  \nd-1\n", accept_new_deployments="1")
    assert added.status_code == 200 and added.url.endswith(f"/admin/platforms#platform-{registered(rt)[0].id}")
    assert "Platform Example Moodle added (issuer https://lms.example.edu, client ID client-1)." in added.text
    [info] = registered(rt)
    assert (info.name, info.deployments, info.accept_new_deployments, info.auth_audience) == ("Example Moodle", ("d-1", "d-2"), True, "")
    row = row_of(added.text, info.id)
    for shown in ("Example Moodle", LMS, "client-1", "d-1, d-2", "/mod/lti/certs.php", "accepted", "no launches yet"):
        assert shown in row, shown

    started = login(Learner(admin.base_url), rt)
    assert started.status_code == 302 and started.headers["Location"].startswith(LMS + "/mod/lti/auth.php?")
    assert audit_rows(rt) == [("platform.add", "admin:root", f"platform:{info.id}", "127.0.0.1",
                               "Example Moodle: issuer https://lms.example.edu, client id client-1, deployments d-1, d-2, accepts new ones")]


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({"issuer": "lms.example.edu"}, "issuer", "Issuer must be an http(s) URL with a host, got 'lms.example.edu'"),
    ({"issuer": LMS + "?x=1"}, "issuer", "Issuer must have no query or fragment, got 'https://lms.example.edu?x=1'"),
    ({"client_id": "   "}, "client_id", "Client ID must not be empty (the client id the LMS gave LabDesk)"),
    ({"auth_login_url": "ftp://lms.example.edu/auth"}, "auth_login_url", "Auth login URL must be an http(s) URL with a host"),
    ({"auth_token_url": "https://"}, "auth_token_url", "Token URL must be an http(s) URL with a host, got 'https://'"),
    ({"key_set_url": "https://lms.example.edu:port/keys"}, "key_set_url", "Key set URL must be an http(s) URL with a host"),
    ({"auth_audience": "canvas.instructure.com"}, "auth_audience", "Audience must be an http(s) URL with a host"),
    ({"name": "n" * 256}, "name", "Name is longer than 255 characters"),
])
def test_a_bad_platform_is_refused_beside_its_field_keeping_what_was_typed(
    rt: Runtime, admin: Browser, fields: dict[str, str], field: str, reason: str
) -> None:
    refused = add(admin, **{"deployments": "d-7", **fields})
    assert refused.status_code == 400 and "Not added: see the field marked below." in refused.text
    assert field_error(refused.text, field).startswith(reason)
    for key in ("name", "issuer", "client_id", "auth_login_url", "auth_token_url", "key_set_url", "auth_audience"):
        assert typed_value(refused.text, key) == {**FORM, **fields}[key].strip(), key
    assert ">d-7</textarea>" in refused.text
    assert registered(rt) == [] and audit_rows(rt) == []


def test_the_console_and_the_cli_refuse_with_the_same_words(rt: Runtime) -> None:
    """One validation: the CLI's message is the console's with the option's name instead of the field's label."""
    values = {**FORM, "key_set_url": "not a url", "deployments": []}
    with pytest.raises(platforms.InvalidPlatformInput) as console:
        platforms.validate(values)
    with pytest.raises(platforms.InvalidPlatformInput) as cli:
        platforms.validate(values, OPTIONS)
    assert str(console.value).replace("Key set URL", "--key-set-url") == str(cli.value)


def test_an_empty_deployment_line_is_spacing_but_a_second_registration_of_the_pair_is_refused(rt: Runtime, admin: Browser) -> None:
    add(admin)
    again = add(admin, name="Again", deployments="d-3")
    assert again.status_code == 400
    assert field_error(again.text, "client_id") == "Platform https://lms.example.edu with client id client-1 is already registered"
    assert typed_value(again.text, "name") == "Again"
    [info] = registered(rt)
    assert (info.name, info.deployments) == ("Example Moodle", ())
    assert [a for a, *_ in audit_rows(rt)] == ["platform.add"]
    other_client = add(admin, client_id="client-2", name="")
    assert other_client.status_code == 200 and f"Platform {LMS} added" in other_client.text, "the name defaults to the issuer"
    assert len(registered(rt)) == 2


# -- editing --------------------------------------------------------------------------------------------
def test_editing_a_platform_saves_it_refuses_another_ones_pair_and_audits(rt: Runtime, admin: Browser) -> None:
    first = platforms.add(rt, LMS, "client-1", LMS + "/auth", LMS + "/token", LMS + "/keys", name="First")
    second = platforms.add(rt, LMS, "client-2", LMS + "/auth", LMS + "/token", LMS + "/keys", name="Second")
    page = admin.get(f"/admin/platforms/{second.id}")
    assert page.status_code == 200 and typed_value(page.text, "client_id") == "client-2"
    edit = {"name": "Second Moodle", "issuer": LMS, "client_id": "client-2", "auth_login_url": LMS + "/new-auth",
            "auth_token_url": LMS + "/token", "key_set_url": LMS + "/jwks", "auth_audience": LMS + "/aud"}

    saved = post(admin, f"/admin/platforms/{second.id}", **edit, accept_new_deployments="1")
    assert saved.status_code == 200 and saved.url.endswith(f"/admin/platforms/{second.id}")
    assert "Platform Second Moodle saved." in saved.text and typed_value(saved.text, "key_set_url") == LMS + "/jwks"
    assert 'id="accept_new_deployments" name="accept_new_deployments" value="1" checked' in saved.text
    stored = platforms.by_id(rt, second.id)
    assert (stored.name, stored.auth_login_url, stored.key_set_url, stored.auth_audience, stored.accept_new_deployments) == (
        "Second Moodle", LMS + "/new-auth", LMS + "/jwks", LMS + "/aud", True)
    assert login(Learner(admin.base_url), rt, "client-2").headers["Location"].startswith(LMS + "/new-auth?"), "logins use it at once"

    taken = post(admin, f"/admin/platforms/{second.id}", **{**edit, "client_id": "client-1", "name": "Typed"})
    assert taken.status_code == 400 and "Not saved: see the field marked below." in taken.text
    assert field_error(taken.text, "client_id") == (
        f"Platform {LMS} with client id client-1 is already registered as platform {first.id} (First); change that one instead")
    assert (typed_value(taken.text, "client_id"), typed_value(taken.text, "name")) == ("client-1", "Typed")
    bad = post(admin, f"/admin/platforms/{second.id}", **{**edit, "auth_token_url": "token.php"})
    assert field_error(bad.text, "auth_token_url") == "Token URL must be an http(s) URL with a host, got 'token.php'"
    assert platforms.by_id(rt, second.id) == stored and platforms.by_id(rt, first.id) == first

    assert audit_rows(rt) == [("platform.update", "admin:root", f"platform:{second.id}", "127.0.0.1",
                               "Second Moodle: changed auth_login_url, key_set_url, auth_audience, name, accept_new_deployments")]
    assert admin.get("/admin/platforms/999").status_code == 404


def test_deployments_are_added_once_and_removed(rt: Runtime, admin: Browser) -> None:
    info = platforms.add(rt, LMS, "client-1", LMS + "/auth", LMS + "/token", LMS + "/keys", name="Moodle")
    path = f"/admin/platforms/{info.id}/deployments"

    added = post(admin, path, deployment_id=" 123:abc ")
    assert added.url.endswith(f"/admin/platforms/{info.id}#deployments") and "Deployment 123:abc of Moodle may launch LabDesk now." in added.text
    assert "<code>123:abc</code>" in added.text and platforms.by_id(rt, info.id).deployments == ("123:abc",)
    twice = post(admin, path, deployment_id="123:abc")
    assert twice.status_code == 400 and field_error(twice.text, "deployment_id") == f"Platform {info.id} already has deployment '123:abc'"
    empty = post(admin, path, deployment_id="  ")
    assert empty.status_code == 400 and field_error(empty.text, "deployment_id") == "Deployment ID must not be empty"

    removed = post(admin, path + "/remove", deployment_id="123:abc")
    assert "Deployment 123:abc of Moodle removed: its launches are refused." in removed.text
    assert "No deployments recorded." in removed.text and platforms.by_id(rt, info.id).deployments == ()
    gone = post(admin, path + "/remove", deployment_id="123:abc")
    assert f"Platform {info.id} has no deployment &#39;123:abc&#39;" in gone.text
    assert [(a, d) for a, _, _, _, d in audit_rows(rt)] == [
        ("platform.deployment_add", "Moodle: deployment 123:abc"), ("platform.deployment_remove", "Moodle: deployment 123:abc")]


# -- removing -------------------------------------------------------------------------------------------
def test_removing_asks_first_then_refuses_logins_and_keeps_the_courses(rt: Runtime, admin: Browser) -> None:
    info = platforms.add(rt, LMS, "client-1", LMS + "/auth", LMS + "/token", LMS + "/keys", deployments=["d-1"], name="Old Moodle")
    world = make_world(rt)
    with rt.session() as db:
        db.add(LinkServices(activity_id=world.activity_id, platform_id=info.id, lineitem_url=LMS + "/lineitem/1"))
        db.add(ScoreOutbox(activity_id=world.activity_id, user_id=world.user_id, payload={"scoreGiven": 1}))
        db.commit()
    assert "1 course, 1 activity" in row_of(admin.get("/admin/platforms").text, info.id)

    confirm = admin.get(f"/admin/platforms/{info.id}/remove")
    assert confirm.status_code == 200 and "Remove platform Old Moodle?" in confirm.text
    for said in ("Launches from it stop working at once", "Its 1 course and 1 activity", "are kept",
                 "1 score not yet delivered cannot be delivered any more"):
        assert said in confirm.text, said
    assert registered(rt) == [info], "the confirmation page changes nothing"

    stale = post(admin, f"/admin/platforms/{info.id}/remove", issuer=LMS, client_id="client-2")
    assert "not the one you confirmed: nothing was removed." in stale.text and registered(rt) == [info]
    removed = post(admin, f"/admin/platforms/{info.id}/remove", issuer=LMS, client_id="client-1")
    assert removed.url.endswith("/admin/platforms")
    assert "Platform Old Moodle removed: launches from it are refused from now on." in removed.text
    assert registered(rt) == [] and "No platforms registered yet" in removed.text
    refused = login(Learner(admin.base_url), rt)
    assert refused.status_code != 302 and "This LMS is not registered with LabDesk" in refused.text
    with rt.session() as db:
        assert db.get(Course, world.course_id) is not None and db.get(Activity, world.activity_id) is not None
        assert db.get(LinkServices, world.activity_id) is None
    assert audit_rows(rt) == [("platform.remove", "admin:root", f"platform:{info.id}", "127.0.0.1",
                               f"Old Moodle: issuer {LMS}, client id client-1")]
    survivors = registered(rt)  # the login may have registered the emulator (development), on SQLite as id 1 again
    again = post(admin, f"/admin/platforms/{info.id}/remove", issuer=LMS, client_id="client-1")
    assert "nothing was removed." in again.text and registered(rt) == survivors


# -- Dynamic Registration -------------------------------------------------------------------------------
def test_an_invitation_is_shown_once_works_once_and_is_audited_without_its_token(rt: Runtime, admin: Browser) -> None:
    page = admin.get("/admin/platforms").text
    base = rt.settings.public_url.rstrip("/")
    for url in ("/lti/login", "/lti/launch", "/lti/jwks", "/lti/canvas.json"):
        assert base + url in page, url
    for family in ("<h3>Moodle</h3>", "<h3>Canvas</h3>", "<h3>Open edX</h3>"):
        assert family in page

    created = post(admin, "/admin/platforms/invite")
    assert created.status_code == 200 and "Registration invitation" in created.text
    url = html.unescape(re.search(r'id="invite-url" value="([^"]+)"', created.text).group(1))  # type: ignore[union-attr]
    assert url.startswith(base + "/lti/register?invite=")
    assert re.search(r'<strong id="invite-expires">\d{4}-\d\d-\d\d \d\d:\d\d UTC</strong>', created.text)
    token = url.rsplit("=", 1)[1]
    assert invites.valid(rt, token) and 6 * 86400 < rt.redis.ttl(invites.KEY.format(token=token)) <= invites.TTL
    assert token not in admin.get("/admin/platforms").text, "the URL is shown on the answer only"

    opened = admin.get("/lti/register?invite=" + token)
    assert "This address is LabDesk&#39;s Dynamic Registration URL" in opened.text, "the invitation is accepted"
    assert "not valid" in admin.get("/lti/register?invite=wrong").text

    [(action, who, target, address, detail)] = audit_rows(rt)
    assert (action, who, address) == ("platform.invite", "admin:root", "127.0.0.1") and target.startswith("invite:")
    assert token not in detail and token not in target and "valid once until" in detail
