"""The emulator's services as the tool meets them: the token endpoint (client credentials with a JWT
assertion checked against LabDesk's JWKS over HTTP), grades, the roster, and the outage switch."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lti import claims as c
from lti.emulator import people, site, store
from tests.emulator.conftest import Emulated
from tests.emulator.flow import access_token, assertion, token_request

SCORE_MEDIA = "application/vnd.ims.lis.v1.score+json"
LINEITEM_MEDIA = "application/vnd.ims.lis.v2.lineitem+json"
ALL_AGS = [c.SCOPE_LINEITEM, c.SCOPE_RESULT_READONLY, c.SCOPE_SCORE]


def _score(user: str, timestamp: str, given: float | None = 7, **more: Any) -> dict[str, Any]:
    body = {"userId": user, "timestamp": timestamp, "activityProgress": "Completed", "gradingProgress": "FullyGraded",
            "scoreGiven": given, "scoreMaximum": 10, **more}
    return {k: v for k, v in body.items() if v is not None}


def _post_score(emulated: Emulated, token: str, score: dict[str, Any], item: str = store.SEED_LINE_ITEM_ID) -> requests.Response:
    url = f"{emulated.emulator}/courses/demo-course/lineitems/{item}/scores"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SCORE_MEDIA}
    return requests.post(url, data=json.dumps(score), headers=headers, timeout=10)


def _stranger_assertion(rt: Any) -> str:
    """Claims a tool would send, signed by a key LabDesk never published (under LabDesk's kid)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    claims = jwt.decode(assertion(rt), options={"verify_signature": False})
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": jwt.get_unverified_header(assertion(rt))["kid"]})


def test_the_token_endpoint_grants_a_token_to_an_assertion_signed_with_labdesks_key(emulated: Emulated) -> None:
    rt = emulated.rt
    answer = token_request(rt, [c.SCOPE_SCORE, c.SCOPE_NRPS, "https://example.com/unknown-scope"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]
    assert body["scope"].split() == [c.SCOPE_SCORE, c.SCOPE_NRPS]
    assert answer.headers["Cache-Control"] == "no-store"
    assert store.tokens_issued(rt) == 1


def test_the_token_endpoint_refuses_bad_assertions(emulated: Emulated) -> None:
    rt = emulated.rt
    used = assertion(rt)
    assert token_request(rt, [c.SCOPE_SCORE], used).status_code == 200
    now = int(time.time())
    refusals = {
        "replayed jti": (used, 401, "invalid_client"),
        "foreign key": (_stranger_assertion(rt), 401, "invalid_client"),
        "wrong audience": (assertion(rt, aud=site.issuer(rt.settings)), 401, "invalid_client"),
        "wrong issuer": (assertion(rt, iss="someone-else"), 401, "invalid_client"),
        "wrong subject": (assertion(rt, sub="someone-else"), 401, "invalid_client"),
        "expired": (assertion(rt, iat=now - 900, exp=now - 600), 401, "invalid_client"),
        "no jti": (assertion(rt, jti=None), 401, "invalid_client"),
        "not a JWT": ("garbage", 401, "invalid_client"),
    }
    for name, (sent, status, error) in refusals.items():
        answer = token_request(rt, [c.SCOPE_SCORE], sent)
        assert (answer.status_code, answer.json()["error"]) == (status, error), name
        assert answer.json()["error_description"], name
    answer = token_request(rt, ["https://example.com/unknown-scope"])
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_scope")
    form = {"grant_type": "password", "client_assertion_type": "x", "client_assertion": assertion(rt), "scope": c.SCOPE_SCORE}
    answer = requests.post(site.token_url(rt.settings), data=form, timeout=10)
    assert (answer.status_code, answer.json()["error"]) == (400, "unsupported_grant_type")
    assert store.tokens_issued(rt) == 1


def test_scores_with_increasing_timestamps_are_kept_and_an_older_one_is_refused(emulated: Emulated) -> None:
    rt = emulated.rt
    token = access_token(rt, ALL_AGS)
    first = _score(people.ADA.sub, "2030-01-01T10:00:00.100+00:00", 4, activityProgress="InProgress", gradingProgress="Pending")
    second = _score(people.ADA.sub, "2030-01-01T10:00:00.200Z", 7, comment="well done")
    for sent in (first, second):
        answer = _post_score(emulated, token, sent)
        assert answer.status_code == 200, answer.text
    older = _score(people.ADA.sub, "2030-01-01T11:00:00.150+01:00", 9)  # 10:00:00.150 UTC: older than the last
    same = _score(people.ADA.sub, "2030-01-01T10:00:00.200+00:00", 9)
    for sent in (older, same):
        answer = _post_score(emulated, token, sent)
        assert answer.status_code == 409 and answer.json()["error"] == "conflict"
        assert "not newer" in answer.json()["message"]
    assert _post_score(emulated, token, _score(people.ALAN.sub, "2030-01-01T09:00:00.000Z", 3)).status_code == 200

    latest = store.scores(rt)[store.SEED_LINE_ITEM_ID]
    assert latest[people.ADA.sub] == second and latest[people.ALAN.sub]["scoreGiven"] == 3
    assert store.score_history(rt, "demo-course", store.SEED_LINE_ITEM_ID)[:2] == [first, second]

    results = requests.get(f"{emulated.emulator}/courses/demo-course/lineitems/{store.SEED_LINE_ITEM_ID}/results",
                           params={"user_id": people.ADA.sub}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert results.headers["Content-Type"] == "application/vnd.ims.lis.v2.resultcontainer+json"
    (result,) = results.json()
    assert (result["userId"], result["resultScore"], result["resultMaximum"], result["comment"]) == (people.ADA.sub, 7, 10, "well done")

    page = requests.get(f"{emulated.emulator}/courses/demo-course/gradebook", timeout=10).text
    assert "7/10" in page and "Completed" in page and "FullyGraded" in page and "2030-01-01T10:00:00.200Z" in page


def test_scores_that_break_the_spec_are_refused_with_the_reason(emulated: Emulated) -> None:
    token = access_token(emulated.rt, [c.SCOPE_SCORE])
    stamp = "2030-01-01T10:00:00.100+00:00"
    refusals = {
        "timestamp": _score(people.ADA.sub, "2030-01-01T10:00:00+00:00"),
        "activityProgress": _score(people.ADA.sub, stamp, activityProgress="Done"),
        "gradingProgress": _score(people.ADA.sub, stamp, gradingProgress="Graded"),
        "scoreGiven": _score(people.ADA.sub, stamp, -1),
        "scoreMaximum": {**_score(people.ADA.sub, stamp), "scoreMaximum": 0},
        "member": _score("not-in-the-course", stamp),
        "userId": {k: v for k, v in _score(people.ADA.sub, stamp).items() if k != "userId"},
    }
    for name, sent in refusals.items():
        answer = _post_score(emulated, token, sent)
        assert answer.status_code == 400 and name in answer.json()["message"], (name, answer.text)
    wrong_type = requests.post(f"{emulated.emulator}/courses/demo-course/lineitems/{store.SEED_LINE_ITEM_ID}/scores",
                               json=_score(people.ADA.sub, stamp), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert wrong_type.status_code == 415 and SCORE_MEDIA in wrong_type.json()["message"]
    assert store.scores(emulated.rt)[store.SEED_LINE_ITEM_ID] == {}


def test_services_need_a_token_with_the_right_scope(emulated: Emulated) -> None:
    rt = emulated.rt
    url = f"{emulated.emulator}/courses/demo-course/lineitems"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer forged"}, timeout=10).status_code == 401
    roster_only = access_token(rt, [c.SCOPE_NRPS])
    answer = requests.get(url, headers={"Authorization": f"Bearer {roster_only}"}, timeout=10)
    assert answer.status_code == 403 and answer.json()["error"] == "insufficient_scope"
    assert _post_score(emulated, roster_only, _score(people.ADA.sub, "2030-01-01T10:00:00.100Z")).status_code == 403
    assert [(e["path"], e["status"]) for e in store.service_log(rt)][-2:] == [
        ("/emulator/courses/demo-course/lineitems", 403), (f"/emulator/courses/demo-course/lineitems/{store.SEED_LINE_ITEM_ID}/scores", 403),
    ]


def test_line_items_can_be_listed_filtered_created_changed_and_deleted(emulated: Emulated) -> None:
    token = access_token(emulated.rt, [c.SCOPE_LINEITEM])
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{emulated.emulator}/courses/demo-course/lineitems"
    listed = requests.get(url, params={"resource_link_id": store.SEED_LINK_ID}, headers=auth, timeout=10)
    assert listed.headers["Content-Type"] == "application/vnd.ims.lis.v2.lineitemcontainer+json"
    assert [i["id"] for i in listed.json()] == [f"{url}/{store.SEED_LINE_ITEM_ID}"]
    assert listed.json()[0]["scoreMaximum"] == 10

    new = {"scoreMaximum": 20, "label": "Bonus lab", "resourceLinkId": store.SEED_LINK_ID, "tag": "labdesk", "resourceId": "bonus"}
    created = requests.post(url, data=json.dumps(new), headers={**auth, "Content-Type": LINEITEM_MEDIA}, timeout=10)
    assert created.status_code == 201 and created.headers["Content-Type"] == LINEITEM_MEDIA
    item_url = created.json()["id"]
    assert created.json() == {"id": item_url, **new}
    assert [i["id"] for i in requests.get(url, params={"tag": "labdesk"}, headers=auth, timeout=10).json()] == [item_url]

    changed = requests.put(item_url, data=json.dumps({**new, "label": "Renamed", "scoreMaximum": 25}),
                           headers={**auth, "Content-Type": LINEITEM_MEDIA}, timeout=10)
    assert changed.status_code == 200 and changed.json()["label"] == "Renamed"
    assert requests.get(item_url, headers=auth, timeout=10).json()["scoreMaximum"] == 25

    bad = requests.post(url, data=json.dumps({"label": "No maximum"}), headers={**auth, "Content-Type": LINEITEM_MEDIA}, timeout=10)
    assert bad.status_code == 400 and "scoreMaximum" in bad.json()["message"]
    assert requests.delete(item_url, headers=auth, timeout=10).status_code == 204
    assert requests.get(item_url, headers=auth, timeout=10).status_code == 404


def test_the_outage_switch_makes_token_grades_and_roster_answer_503(emulated: Emulated) -> None:
    rt = emulated.rt
    token = access_token(rt, ALL_AGS + [c.SCOPE_NRPS])
    auth = {"Authorization": f"Bearer {token}"}
    switched = requests.post(emulated.emulator + "/outage", json={"down": True}, timeout=10)
    assert switched.status_code == 200 and switched.json() == {"down": True}

    assert token_request(rt, [c.SCOPE_SCORE]).status_code == 503
    assert _post_score(emulated, token, _score(people.ADA.sub, "2030-01-01T10:00:00.100Z")).status_code == 503
    assert requests.get(f"{emulated.emulator}/courses/demo-course/lineitems", headers=auth, timeout=10).status_code == 503
    assert requests.get(f"{emulated.emulator}/courses/demo-course/memberships", headers=auth, timeout=10).status_code == 503
    assert store.scores(rt)[store.SEED_LINE_ITEM_ID] == {}

    assert requests.post(emulated.emulator + "/outage", json={"down": False}, timeout=10).json() == {"down": False}
    assert _post_score(emulated, token, _score(people.ADA.sub, "2030-01-01T10:00:00.100Z")).status_code == 200
    assert store.scores(rt)[store.SEED_LINE_ITEM_ID][people.ADA.sub]["scoreGiven"] == 7


def test_the_roster_pages_through_every_member(emulated: Emulated) -> None:
    token = access_token(emulated.rt, [c.SCOPE_NRPS])
    url: str | None = f"{emulated.emulator}/courses/demo-course/memberships"
    seen, pages = [], 0
    while url:
        answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
        body = answer.json()
        assert body["context"]["id"] == "demo-course"
        assert len(body["members"]) <= 10
        seen += [m["user_id"] for m in body["members"]]
        pages += 1
        url = answer.links.get("next", {}).get("url")
    everyone = [p.sub for p in people.everyone()]
    assert seen == everyone and len(everyone) == 29 and pages == 3

    instructors = requests.get(f"{emulated.emulator}/courses/demo-course/memberships", params={"role": people.INSTRUCTOR, "limit": 50},
                               headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["members"]
    assert [m["user_id"] for m in instructors] == [people.GRACE.sub]
