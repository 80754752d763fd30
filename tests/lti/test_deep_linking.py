"""The instructor's lab picker and the signed deep-linking response, on real SQLite/PostgreSQL and Redis.

Each test makes the deep-linking launch by hand, as the launch endpoint would: a `Launch` saved with
`lti.handoff.save`, its token appended to the session's `deep_links`. The JWT the picker answers with is
verified the way a platform would, against LabDesk's published JWKS.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jwt
import lxml.html
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from broker.models import Image
from broker.runtime import Runtime
from lti import handoff, keys
from lti.catalogue_view import card
from lti.claims import (
    DEEP_LINKING_REQUEST,
    DEEP_LINKING_RESPONSE,
    DEPLOYMENT_ID,
    DL_CONTENT_ITEMS,
    DL_DATA,
    DL_MSG,
    MESSAGE_TYPE,
    VERSION,
    DeepLinkSettings,
    Launch,
)
from tests.support.http import serve

ISSUER = "https://lms.example.edu"
CLIENT_ID = "labdesk-client-1"
RETURN_URL = "https://lms.example.edu/deep-linking/return?course=7"
LINUX_SPEC: dict[str, Any] = {
    "resources": {"vcpu": 2, "ram_mb": 4096, "disk_gb": 20},
    "checks": [{"title": "Create a user", "weight": 3}, {"title": "Harden SSH", "weight": 7}],
    "idle_suspend_after": 300,
    "reap_after_days": 7,
}


@pytest.fixture
def catalogue(rt: Runtime) -> None:
    """Three labs; linux-basics has an older version that the picker must not offer."""
    with rt.session() as db:
        db.add_all([
            Image(slug="linux-basics", version=1, title="Linux basics (old)", description="Old", spec={}),
            Image(slug="linux-basics", version=2, title="Linux basics", description="Users and SSH.", spec=LINUX_SPEC),
            Image(slug="gpu-ml", version=3, title="GPU notebook", description="Train a model.", protocol="rdp",
                  spec={"resources": {"gpu": "nvidia-t4", "vcpu": 8}, "max_score": 50}),
            Image(slug="bare", title="Bare desktop", spec={"checks": "not a list", "resources": [1, 2]}),
        ])
        db.commit()


@pytest.fixture
def app(rt: Runtime) -> Flask:
    return create_app(rt.settings, rt)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def make_launch(**deep_link: Any) -> Launch:
    settings = DeepLinkSettings(
        return_url=RETURN_URL, accept_types=("ltiResourceLink", "link"), accept_multiple=True,
        accept_lineitem=True, data="platform-state-42",
    )
    return Launch(
        platform_id=1, issuer=ISSUER, client_id=CLIENT_ID, deployment_id="deployment-9",
        message_type=DEEP_LINKING_REQUEST, subject="teacher-1", name="Grace", email="grace@example.edu",
        roles=("http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor",), view="instructor",
        test_user=False, context_id="course-7", context_title="Networks 101", resource_link_id="",
        resource_link_title="", deep_link=dataclasses.replace(settings, **deep_link),
    )


def open_picker(rt: Runtime, client: FlaskClient, **deep_link: Any) -> str:
    """What the launch endpoint does before redirecting to the picker; returns the token."""
    token = handoff.save(rt, make_launch(**deep_link))
    with client.session_transaction() as session:
        session["user_id"] = 1
        session["deep_links"] = session.get("deep_links", []) + [token]
    return token


def csrf_of(page: str) -> str:
    return lxml.html.fromstring(page).forms[0].fields["csrf_token"]


def submit(client: FlaskClient, token: str, **fields: Any):  # type: ignore[no-untyped-def]
    page = client.get(f"/lti/deep-link/{token}")
    assert page.status_code == 200, page.text
    return client.post(f"/lti/deep-link/{token}", data={"csrf_token": csrf_of(page.text), "action": "add", **fields})


def returned_jwt(rt: Runtime, page: str) -> dict[str, Any]:
    """The auto-posted form's JWT, verified as the platform would: RS256, our JWKS, aud = its issuer."""
    form = lxml.html.fromstring(page).get_element_by_id("deep-link-response")
    assert form.get("method") == "post" and form.get("action") == RETURN_URL
    assert list(form.fields) == ["JWT"]
    token = form.fields["JWT"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(keys.jwks(rt))[kid]
    return jwt.decode(token, key, algorithms=["RS256"], audience=ISSUER, issuer=CLIENT_ID)


def graded(slug: str, label: str, score: str) -> dict[str, str]:
    return {f"grade-{slug}": "on", f"label-{slug}": label, f"max_score-{slug}": score}


def test_the_picker_lists_the_newest_version_of_each_lab_with_what_it_needs_and_how_it_is_scored(
    rt: Runtime, client: FlaskClient, catalogue: None
) -> None:
    token = open_picker(rt, client)
    response = client.get(f"/lti/deep-link/{token}")
    assert response.status_code == 200
    tree = lxml.html.fromstring(response.text)
    assert "Networks 101" in tree.findtext(".//h1")
    labs = {li.get("data-slug"): li for li in tree.find_class("lab")}
    assert list(labs) == ["bare", "gpu-ml", "linux-basics"]  # by title; version 1 of linux-basics is gone
    assert "Linux basics (old)" not in response.text

    linux = labs["linux-basics"]
    assert linux.find_class("resources")[0].text_content() == "2 vCPU, 4096 MB RAM, 20 GB disk"
    assert [li.text_content() for li in linux.find_class("checks")[0]] == ["Create a user (3 points)", "Harden SSH (7 points)"]
    assert linux.find_class("max-score")[0].text_content() == "10"  # the sum of the check weights
    assert "5 minutes idle" in linux.text_content() and "7 days unused" in linux.text_content()
    assert "Users and SSH." in linux.text_content() and "VNC" in linux.text_content()

    gpu = labs["gpu-ml"]
    assert gpu.find_class("resources")[0].text_content() == "8 vCPU, GPU: nvidia-t4"
    assert gpu.find_class("max-score")[0].text_content() == "50"
    assert "2 minutes idle" in gpu.text_content() and "14 days unused" in gpu.text_content()  # settings' defaults
    assert labs["bare"].find_class("max-score")[0].text_content() == "10" and not labs["bare"].find_class("resources")

    form = tree.forms[0]
    assert form.inputs["lab"][0].get("type") == "checkbox"  # accept_multiple
    assert form.fields["label-gpu-ml"] == "GPU notebook" and form.fields["max_score-gpu-ml"] == "50"
    assert form.inputs["grade-gpu-ml"].checked
    assert [b.get("value") for b in form.xpath(".//button")] == ["add", "cancel"]


def test_a_platform_that_takes_one_lab_gets_radio_buttons(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client, accept_multiple=False)
    form = lxml.html.fromstring(client.get(f"/lti/deep-link/{token}").text).forms[0]
    assert {i.get("type") for i in form.inputs["lab"]} == {"radio"}


def test_choosing_a_lab_answers_with_a_signed_response_that_auto_posts_to_the_platform(
    rt: Runtime, client: FlaskClient, catalogue: None
) -> None:
    token = open_picker(rt, client)
    csrf = csrf_of(client.get(f"/lti/deep-link/{token}").text)
    response = submit(client, token, lab="linux-basics", presentation="window", **graded("linux-basics", "Lab 1: Linux", "25"))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" in response.text and ">Continue</button>" in response.text

    claims = returned_jwt(rt, response.text)
    assert claims[MESSAGE_TYPE] == DEEP_LINKING_RESPONSE and claims[VERSION] == "1.3.0"
    assert claims[DEPLOYMENT_ID] == "deployment-9"
    assert claims[DL_DATA] == "platform-state-42"
    assert claims[DL_MSG] == "Added 1 lab."
    assert claims["exp"] - claims["iat"] == 300 and claims["nonce"]
    assert claims[DL_CONTENT_ITEMS] == [{
        "type": "ltiResourceLink",
        "title": "Linux basics",
        "text": "Users and SSH.",
        "url": "http://127.0.0.1:8000/lti/launch",
        "custom": {"lab": "linux-basics", "lab_version": "2"},
        "window": {"targetName": "labdesk"},
        "lineItem": {"scoreMaximum": 25, "label": "Lab 1: Linux", "resourceId": "linux-basics", "tag": "labdesk"},
    }]

    again = client.post(f"/lti/deep-link/{token}", data={"csrf_token": csrf, "action": "add", "lab": "bare"})
    assert again.status_code == 403 and "not open in this browser" in again.text  # answered once
    assert handoff.load(rt, token) is None


def test_several_labs_become_several_items_each_graded_as_chosen(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client)
    response = submit(
        client, token, lab=["gpu-ml", "bare"], presentation="iframe",
        **graded("gpu-ml", "ML", "12.5"), **{"label-bare": "Bare", "max_score-bare": "10"},  # bare: grading off
    )
    claims = returned_jwt(rt, response.text)
    items = claims[DL_CONTENT_ITEMS]
    assert [item["custom"]["lab"] for item in items] == ["gpu-ml", "bare"]
    assert items[0]["lineItem"]["scoreMaximum"] == 12.5 and items[0]["iframe"] == {"width": 1280, "height": 800}
    assert "lineItem" not in items[1]
    assert claims[DL_MSG] == "Added 2 labs."


def test_two_labs_where_the_platform_takes_one_is_refused_keeping_the_choices(
    rt: Runtime, client: FlaskClient, catalogue: None
) -> None:
    token = open_picker(rt, client, accept_multiple=False)
    response = submit(client, token, lab=["gpu-ml", "bare"], **graded("gpu-ml", "My label", "40"))
    assert response.status_code == 400
    assert "accepts only one lab here" in response.text and 'role="alert"' in response.text
    form = lxml.html.fromstring(response.text).forms[0]
    assert sorted(i.get("value") for i in form.inputs["lab"] if i.checked) == ["bare", "gpu-ml"]
    assert form.fields["label-gpu-ml"] == "My label" and form.fields["max_score-gpu-ml"] == "40"
    assert not form.inputs["grade-bare"].checked
    assert handoff.load(rt, token) is not None  # still open: the instructor fixes the choice and submits


@pytest.mark.parametrize("score", ["0", "-3", "ten", "nan", "inf", ""])
def test_the_maximum_score_must_be_a_positive_number(rt: Runtime, client: FlaskClient, catalogue: None, score: str) -> None:
    token = open_picker(rt, client)
    response = submit(client, token, lab="bare", **graded("bare", "Bare", score))
    assert response.status_code == 400
    assert "The maximum score for “Bare desktop” must be a number greater than 0." in response.text


def test_an_unknown_lab_or_no_lab_is_refused(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client)
    unknown = submit(client, token, lab="windows-server")
    assert unknown.status_code == 400 and "“windows-server” is not in the catalogue" in unknown.text
    nothing = submit(client, token)
    assert nothing.status_code == 400 and "Choose a lab to add." in nothing.text


def test_no_line_item_when_the_platform_does_not_accept_one(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client, accept_lineitem=False, data=None)
    page = client.get(f"/lti/deep-link/{token}").text
    assert "Grade this activity" not in page and "max_score-" not in page
    response = submit(client, token, lab="linux-basics", **graded("linux-basics", "ignored", "0"))
    claims = returned_jwt(rt, response.text)
    assert "lineItem" not in claims[DL_CONTENT_ITEMS][0]
    assert DL_DATA not in claims  # nothing to echo


def test_cancel_answers_with_no_content_items(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client)
    page = client.get(f"/lti/deep-link/{token}")
    response = client.post(f"/lti/deep-link/{token}", data={"csrf_token": csrf_of(page.text), "action": "cancel", "lab": "bare"})
    claims = returned_jwt(rt, response.text)
    assert claims[DL_CONTENT_ITEMS] == [] and DL_MSG not in claims
    assert claims[DL_DATA] == "platform-state-42"
    assert handoff.load(rt, token) is None


def test_a_platform_that_takes_no_lab_links_is_offered_only_cancel(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client, accept_types=("link", "html"))
    page = client.get(f"/lti/deep-link/{token}")
    assert "does not accept lab links" in page.text
    form = lxml.html.fromstring(page.text).forms[0]
    assert [b.get("value") for b in form.xpath(".//button")] == ["cancel"] and "lab" not in form.inputs
    refused = client.post(f"/lti/deep-link/{token}", data={"csrf_token": csrf_of(page.text), "action": "add", "lab": "bare"})
    assert refused.status_code == 400 and "does not accept lab links" in refused.text


def test_a_token_this_browser_did_not_launch_or_that_expired_is_refused_readably(
    rt: Runtime, app: Flask, client: FlaskClient, catalogue: None
) -> None:
    token = open_picker(rt, client)
    csrf = csrf_of(client.get(f"/lti/deep-link/{token}").text)
    foreign = handoff.save(rt, make_launch())  # a real token, but launched in another browser
    response = client.get(f"/lti/deep-link/{foreign}")
    assert response.status_code == 403 and "not open in this browser" in response.text
    assert client.post(f"/lti/deep-link/{foreign}", data={"csrf_token": csrf, "action": "cancel"}).status_code == 403

    handoff.forget(rt, token)  # as if its hour had passed
    expired = client.get(f"/lti/deep-link/{token}")
    assert expired.status_code == 410 and "expired or was already used" in expired.text


def test_a_submission_without_the_session_csrf_token_is_refused(rt: Runtime, client: FlaskClient, catalogue: None) -> None:
    token = open_picker(rt, client)
    client.get(f"/lti/deep-link/{token}")
    response = client.post(f"/lti/deep-link/{token}", data={"csrf_token": "forged", "action": "cancel"})
    assert response.status_code == 400 and "This form has expired" in response.text
    assert handoff.load(rt, token) is not None


def test_the_catalogue_is_read_defensively(rt: Runtime) -> None:
    odd = Image(slug="odd", version=1, title="Odd", protocol="vnc", spec={
        "resources": {"vcpu": "two", "ram_mb": True, "gpu": True, "disk_gb": -1},
        "checks": [{"title": "A", "weight": "heavy"}, {"weight": 5}, "x", {"title": " B ", "weight": 2.5}],
        "max_score": 0, "idle_suspend_after": "soon", "reap_after_days": 3,
    })
    lab = card(odd, rt.settings)
    assert lab.resources == ("GPU",)
    assert [(c.title, c.weight) for c in lab.checks] == [("A", 0.0), ("B", 2.5)]
    assert lab.max_score == 2.5
    assert (lab.idle_suspend_after, lab.reap_after_days) == (rt.settings.idle_suspend_after, 3)


@pytest.fixture
def live(app: Flask) -> Iterator[str]:
    for server in serve(app):
        yield server.url


def test_the_picker_over_real_http(rt: Runtime, app: Flask, live: str, catalogue: None) -> None:
    """A browser's view: the session cookie carries the token, the form round-trips over TCP."""
    token = handoff.save(rt, make_launch(accept_multiple=False))
    cookie = app.session_interface.get_signing_serializer(app).dumps({"user_id": 1, "deep_links": [token]})  # type: ignore[attr-defined]
    browser = requests.Session()
    browser.cookies.set(app.config["SESSION_COOKIE_NAME"], cookie, domain="127.0.0.1")

    page = browser.get(f"{live}/lti/deep-link/{token}", timeout=10)
    assert page.status_code == 200 and "GPU notebook" in page.text
    form = lxml.html.fromstring(page.text).forms[0]
    fields = {**dict(form.form_values()), "lab": "gpu-ml", "action": "add"}
    response = browser.post(live + form.action, data=fields, timeout=10)
    assert response.status_code == 200, response.text
    item = returned_jwt(rt, response.text)[DL_CONTENT_ITEMS][0]
    assert item["custom"] == {"lab": "gpu-ml", "lab_version": "3"}
    assert item["lineItem"] == {"scoreMaximum": 50, "label": "GPU notebook", "resourceId": "gpu-ml", "tag": "labdesk"}

    assert browser.post(live + form.action, data=fields, timeout=10).status_code == 403
    assert requests.get(f"{live}/lti/deep-link/{token}", timeout=10).status_code == 403  # a browser without the session


def test_the_picker_offers_only_labs_that_can_run_on_the_sites_backend(rt: Runtime) -> None:
    from broker.models import Backend
    from lti.catalogue_view import catalogue

    with rt.session() as db:
        db.add(Backend(name=rt.settings.default_backend, kind="local", config={}))
        db.add(Image(slug="cloud-only", version=1, title="Cloud", protocol="rdp", spec={"backends": {"heat": {}}}))
        db.add(Image(slug="here", version=1, title="Here", protocol="vnc", spec={"backends": {"local": {}, "heat": {}}}))
        db.add(Image(slug="legacy", version=1, title="Legacy", protocol="vnc", spec={}))
        db.commit()
        assert [lab.slug for lab in catalogue(db, rt.settings)] == ["here", "legacy"]
