"""The deep-linking return: a response signed with LabDesk's key places resource links (and their line
items) in the course; anything unverifiable or replayed is refused with the reason."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
import requests

from lti import claims as c
from lti import keys
from lti.emulator import launches, people, site, store
from tests.emulator.conftest import Emulated
from tests.emulator.flow import auth_request, auto_forms, query, verify_id_token

ITEM = {
    "type": "ltiResourceLink", "title": "Networking lab", "text": "Routers and switches.",
    "custom": {"lab": "network-basics", "lab_version": "3"},
    "iframe": {"width": 1280, "height": 800},
    "lineItem": {"scoreMaximum": 25, "label": "Networking lab (graded)", "resourceId": "network-basics", "tag": "labdesk"},
}


def _deep_linking_data(emulated: Emulated) -> str:
    """Launch deep linking as the instructor; the `data` the emulator expects back."""
    rt = emulated.rt
    login = query(launches.start(rt, people.GRACE.sub, deep_linking=True))
    answer = requests.get(emulated.emulator + "/auth", params=auth_request(rt, login), timeout=10)
    claims = verify_id_token(emulated.url, auto_forms(answer.text)[0].fields["id_token"], site.issuer(rt.settings))
    return claims[c.DL_SETTINGS]["data"]


def _response(emulated: Emulated, data: str, items: list[dict[str, Any]], **changes: Any) -> str:
    """An LtiDeepLinkingResponse signed with LabDesk's current key, as the tool's picker sends it."""
    rt = emulated.rt
    now = int(time.time())
    claims = {
        "iss": site.CLIENT_ID, "aud": site.issuer(rt.settings), "iat": now, "exp": now + 300,
        "nonce": secrets.token_urlsafe(8), c.DEPLOYMENT_ID: site.DEPLOYMENT_ID,
        c.MESSAGE_TYPE: c.DEEP_LINKING_RESPONSE, c.VERSION: "1.3.0", c.DL_CONTENT_ITEMS: items,
        c.DL_DATA: data, c.DL_MSG: "Added 1 lab.",
    }
    claims.update(changes)
    return keys.signing_key(rt).sign(claims)


def _return(emulated: Emulated, token: str) -> requests.Response:
    return requests.post(emulated.emulator + "/deep-link-return", data={"JWT": token}, timeout=10)


def test_a_deep_linking_response_adds_a_resource_link_and_its_line_item(emulated: Emulated) -> None:
    rt = emulated.rt
    token = _response(emulated, _deep_linking_data(emulated), [ITEM])
    answer = _return(emulated, token)
    assert answer.status_code == 200, answer.text
    assert "Networking lab" in answer.text and "Added 1 lab." in answer.text and "Back to the course page" in answer.text

    link = store.links(rt, "demo-course")[-1]
    assert (link["title"], link["text"], link["custom"], link["presentation"]) == (
        "Networking lab", "Routers and switches.", {"lab": "network-basics", "lab_version": "3"}, "iframe")
    item = store.line_items(rt, "demo-course")[-1]
    assert item["resourceLinkId"] == link["id"]
    assert (item["scoreMaximum"], item["label"], item["resourceId"], item["tag"]) == (25, "Networking lab (graded)", "network-basics", "labdesk")

    # The new activity is on the course page, and its launch carries its custom parameters and line item.
    assert "Networking lab" in requests.get(emulated.emulator + "/", timeout=10).text
    login = query(launches.start(rt, people.ADA.sub, link["id"]))
    launched = requests.get(emulated.emulator + "/auth", params=auth_request(rt, login), timeout=10)
    claims = verify_id_token(emulated.url, auto_forms(launched.text)[0].fields["id_token"], site.issuer(rt.settings))
    assert claims[c.CUSTOM] == link["custom"] and claims[c.RESOURCE_LINK]["id"] == link["id"]
    assert claims[c.AGS]["lineitem"] == site.lineitem_url(rt.settings, "demo-course", item["id"])

    replayed = _return(emulated, token)
    assert replayed.status_code == 400 and "received before" in replayed.text
    assert len(store.links(rt, "demo-course")) == 2


def test_a_response_without_items_adds_nothing(emulated: Emulated) -> None:
    answer = _return(emulated, _response(emulated, _deep_linking_data(emulated), [], **{c.DL_MSG: "Cancelled."}))
    assert answer.status_code == 200 and "Nothing was added" in answer.text
    assert [link["id"] for link in store.links(emulated.rt, "demo-course")] == [store.SEED_LINK_ID]


def test_deep_linking_responses_that_do_not_check_out_are_refused(emulated: Emulated) -> None:
    rt = emulated.rt
    data = _deep_linking_data(emulated)
    forged_key = jwt.encode({"iss": site.CLIENT_ID}, "a shared secret, not LabDesk's RSA key", algorithm="HS256")
    refusals = {
        "data": _response(emulated, "something-else", [ITEM]),
        "aud": _response(emulated, data, [ITEM], aud="https://elsewhere.example"),
        "iss": _response(emulated, data, [ITEM], iss="another-client"),
        "message_type": _response(emulated, data, [ITEM], **{c.MESSAGE_TYPE: c.DEEP_LINKING_REQUEST}),
        "version": _response(emulated, data, [ITEM], **{c.VERSION: "1.1"}),
        "deployment_id": _response(emulated, data, [ITEM], **{c.DEPLOYMENT_ID: "another-deployment"}),
        "nonce": _response(emulated, data, [ITEM], nonce=""),
        "expired": _response(emulated, data, [ITEM], iat=int(time.time()) - 900, exp=int(time.time()) - 600),
        "RS256": forged_key,
        "ltiResourceLink": _response(emulated, data, [{**ITEM, "type": "html"}]),
        "scoreMaximum": _response(emulated, data, [{**ITEM, "lineItem": {"scoreMaximum": 0}}]),
        "custom": _response(emulated, data, [{**ITEM, "custom": {"lab": 3}}]),
    }
    for reason, token in refusals.items():
        answer = _return(emulated, token)
        assert answer.status_code == 400, reason
        assert reason in answer.text, (reason, answer.text)
    assert _return(emulated, "").status_code == 400
    assert [link["id"] for link in store.links(rt, "demo-course")] == [store.SEED_LINK_ID]
    # None of the refusals used up the request's data: the right response still goes through.
    final = _return(emulated, _response(emulated, data, [ITEM]))
    assert final.status_code == 200, final.text
