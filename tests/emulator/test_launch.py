"""The emulator launches the tool as an LMS does: course page, login initiation in an iframe, and an
authorization endpoint that checks the request and posts a signed id_token to the tool's launch URL."""

from __future__ import annotations

import requests

from lti import claims as c
from lti.emulator import launches, people, site, store
from tests.emulator.conftest import Emulated
from tests.emulator.flow import auth_request, auto_forms, parse, query, verify_id_token


def _launch_from_course_page(emulated: Emulated, user: str, link: str) -> dict[str, str]:
    """Press a launch button on the course page; returns the framed login initiation's parameters."""
    browser = requests.Session()
    page = browser.get(emulated.emulator + "/", timeout=10)
    assert page.status_code == 200
    assert "Launch as learner (Ada Lovelace)" in page.text and "Launch as instructor (Grace Hopper)" in page.text
    assert "Add a LabDesk activity" in page.text
    launched = browser.post(emulated.emulator + "/launch", data={"user": user, "link": link}, timeout=10)
    assert launched.status_code == 200 and "open in new window" in launched.text
    (frame,) = parse(launched.text).iframes
    assert frame["allow"] == "clipboard-read; clipboard-write; fullscreen"
    assert frame["src"].startswith(emulated.url + "/lti/login?")
    return query(frame["src"])


def _authorize(emulated: Emulated, params: dict[str, str]) -> requests.Response:
    return requests.get(emulated.emulator + "/auth", params=params, timeout=10)


def test_a_learner_launch_posts_a_signed_id_token_with_every_core_claim(emulated: Emulated) -> None:
    rt = emulated.rt
    login = _launch_from_course_page(emulated, people.ADA.sub, store.SEED_LINK_ID)
    issuer = site.issuer(rt.settings)
    assert login["iss"] == issuer and login["login_hint"] == people.ADA.sub
    assert login["client_id"] == site.CLIENT_ID and login["lti_deployment_id"] == site.DEPLOYMENT_ID
    assert login["target_link_uri"] == emulated.url + "/lti/launch"

    request = auth_request(rt, login)
    answer = _authorize(emulated, request)
    assert answer.status_code == 200, answer.text
    (form,) = auto_forms(answer.text)
    assert form.method == "post" and form.action == emulated.url + "/lti/launch"
    assert form.fields["state"] == request["state"]
    claims = verify_id_token(emulated.url, form.fields["id_token"], issuer)

    assert claims["sub"] == people.ADA.sub and claims["azp"] == site.CLIENT_ID and claims["nonce"] == request["nonce"]
    assert claims["exp"] - claims["iat"] == 300
    assert (claims["name"], claims["given_name"], claims["family_name"]) == ("Ada Lovelace", "Ada", "Lovelace")
    assert claims["email"] == people.ADA.email
    assert claims[c.VERSION] == "1.3.0" and claims[c.MESSAGE_TYPE] == c.RESOURCE_LINK_REQUEST
    assert claims[c.DEPLOYMENT_ID] == site.DEPLOYMENT_ID
    assert claims[c.TARGET_LINK_URI] == emulated.url + "/lti/launch"
    assert claims[c.RESOURCE_LINK]["id"] == store.SEED_LINK_ID and claims[c.RESOURCE_LINK]["title"] == "Demo desktop lab"
    assert people.LEARNER in claims[c.ROLES]
    assert claims[c.CONTEXT] == {"id": "demo-course", "label": "DEMO-101", "title": "Demo course",
                                 "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"]}
    assert claims[c.TOOL_PLATFORM]["guid"] == issuer
    assert claims[c.LAUNCH_PRESENTATION]["document_target"] == "iframe"
    assert claims[c.LAUNCH_PRESENTATION]["return_url"] == emulated.emulator + "/"
    assert claims[c.CUSTOM] == {"lab": "local-desktop"}
    ags = claims[c.AGS]
    assert ags["scope"] == [c.SCOPE_LINEITEM, c.SCOPE_RESULT_READONLY, c.SCOPE_SCORE]
    assert ags["lineitems"] == emulated.emulator + "/courses/demo-course/lineitems"
    assert ags["lineitem"] == ags["lineitems"] + "/" + store.SEED_LINE_ITEM_ID
    assert claims[c.NRPS] == {"context_memberships_url": emulated.emulator + "/courses/demo-course/memberships",
                              "service_versions": ["2.0"]}
    assert c.DL_SETTINGS not in claims


def test_the_test_student_and_the_instructor_carry_their_roles(emulated: Emulated) -> None:
    rt = emulated.rt
    for person, expected in ((people.TEST_STUDENT, {people.LEARNER, people.TEST_USER}),
                             (people.GRACE, {people.INSTRUCTOR, people.FACULTY})):
        login = query(launches.start(rt, person.sub))
        (form,) = auto_forms(_authorize(emulated, auth_request(rt, login)).text)
        claims = verify_id_token(emulated.url, form.fields["id_token"], site.issuer(rt.settings))
        assert expected <= set(claims[c.ROLES])


def test_a_deep_linking_launch_carries_the_deep_linking_settings(emulated: Emulated) -> None:
    rt = emulated.rt
    browser = requests.Session()
    page = browser.post(emulated.emulator + "/launch", data={"user": people.GRACE.sub, "deep_linking": "1"}, timeout=10)
    login = query(parse(page.text).iframes[0]["src"])
    (form,) = auto_forms(_authorize(emulated, auth_request(rt, login)).text)
    claims = verify_id_token(emulated.url, form.fields["id_token"], site.issuer(rt.settings))

    assert claims[c.MESSAGE_TYPE] == c.DEEP_LINKING_REQUEST
    assert people.INSTRUCTOR in claims[c.ROLES]
    assert c.RESOURCE_LINK not in claims and "lineitem" not in claims[c.AGS]
    settings = claims[c.DL_SETTINGS]
    assert settings["deep_link_return_url"] == emulated.emulator + "/deep-link-return"
    assert settings["accept_types"] == ["ltiResourceLink"]
    assert settings["accept_presentation_document_targets"] == ["iframe", "window"]
    assert settings["accept_multiple"] is True and settings["accept_lineitem"] is True and settings["auto_create"] is True
    assert settings["data"]


def test_the_new_window_link_launches_with_the_window_target(emulated: Emulated) -> None:
    rt = emulated.rt
    page = requests.post(emulated.emulator + "/launch", data={"user": people.ALAN.sub, "link": store.SEED_LINK_ID}, timeout=10)
    window = next(a for a in page.text.split('href="')[1:] if "open in new window" in a).split('"')[0]
    login = query(window.replace("&amp;", "&"))
    (form,) = auto_forms(_authorize(emulated, auth_request(rt, login)).text)
    claims = verify_id_token(emulated.url, form.fields["id_token"], site.issuer(rt.settings))
    assert claims[c.LAUNCH_PRESENTATION]["document_target"] == "window" and claims["sub"] == people.ALAN.sub


def test_the_auth_endpoint_refuses_a_wrong_redirect_uri_and_other_bad_requests(emulated: Emulated) -> None:
    rt = emulated.rt
    login = query(launches.start(rt, people.ADA.sub))
    refusals = {
        "redirect_uri": auth_request(rt, login, redirect_uri=emulated.url + "/elsewhere"),
        "prompt": auth_request(rt, login, prompt="login"),
        "response_mode": auth_request(rt, login, response_mode="query"),
        "client_id": auth_request(rt, login, client_id="someone-else"),
        "login_hint": auth_request(rt, login, login_hint=people.ALAN.sub),
        "lti_message_hint": auth_request(rt, login, lti_message_hint="forged"),
        "nonce": auth_request(rt, login, nonce=""),
    }
    for name, params in refusals.items():
        answer = _authorize(emulated, params)
        assert answer.status_code == 400, name
        assert name in answer.text and "id_token" not in answer.text, name
    # POST works as well as GET (both are allowed for the authorization request).
    answer = requests.post(emulated.emulator + "/auth", data=auth_request(rt, login), timeout=10)
    assert answer.status_code == 200 and auto_forms(answer.text)[0].fields["id_token"]
