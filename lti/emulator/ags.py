"""Assignment and Grade Services 2.0: line items, scores and results of a course, behind bearer tokens.

A score whose timestamp is not strictly newer than the last one accepted for the same user and line item
is refused with 409: LabDesk promises increasing timestamps, and the emulator holds it to that promise.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Response, request

from broker.runtime import Runtime
from lti import claims as c
from lti.emulator import guard, paging, request_log, score_rules, site, store
from lti.emulator.blueprint import emulator
from lti.emulator.errors import ServiceError

CONTAINER = "application/vnd.ims.lis.v2.lineitemcontainer+json"
LINE_ITEM = "application/vnd.ims.lis.v2.lineitem+json"
SCORE = "application/vnd.ims.lis.v1.score+json"  # v1: the AGS 2.0 spec names the score type so
RESULTS = "application/vnd.ims.lis.v2.resultcontainer+json"

READ_ITEMS = (c.SCOPE_LINEITEM, c.SCOPE_LINEITEM_READONLY)
OPTIONAL_TEXT = ("resourceId", "tag", "resourceLinkId")
OPTIONAL_TIMES = ("startDateTime", "endDateTime")


def _answer(body: Any, media_type: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers=headers, content_type=media_type)


def _course(rt: Runtime, context: str) -> None:
    store.ensure_seeded(rt)
    if store.course(rt, context) is None:
        raise ServiceError(f"no course {context!r}", 404, "not_found")


def _item(rt: Runtime, context: str, item_id: str) -> dict[str, Any]:
    _course(rt, context)
    item = store.line_item(rt, context, item_id)
    if item is None:
        raise ServiceError(f"no line item {item_id!r} in course {context!r}", 404, "not_found")
    return item


def _body(media_type: str) -> Any:
    """The request's JSON body, which must be sent with the service's media type."""
    if request.mimetype != media_type:
        raise ServiceError(f"Content-Type must be {media_type}, got {request.mimetype or 'none'!r}", 415, "unsupported_media_type")
    try:
        return json.loads(request.get_data(as_text=True), parse_constant=_no_constant)
    except ValueError as exc:
        raise ServiceError(f"the body is not valid JSON: {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def shown(rt: Runtime, context: str, item: dict[str, Any]) -> dict[str, Any]:
    """A stored line item as the service shows it: `id` is its URL."""
    fields = {k: v for k, v in item.items() if k not in ("id", "order")}
    return {"id": site.lineitem_url(rt.settings, context, item["id"]), **fields}


# --- Line items --------------------------------------------------------------------------------------


@emulator.get("/courses/<context>/lineitems")
@request_log.logged
def list_line_items(context: str) -> Response:
    guard.require(*READ_ITEMS)
    rt = site.current_rt()
    _course(rt, context)
    filters = {"resourceLinkId": "resource_link_id", "resourceId": "resource_id", "tag": "tag"}
    wanted = {field: request.args[arg] for field, arg in filters.items() if arg in request.args}
    items = [i for i in store.line_items(rt, context) if all(i.get(f) == v for f, v in wanted.items())]
    result = paging.page(items, site.lineitems_url(rt.settings, context), default_limit=None)
    return _answer([shown(rt, context, i) for i in result.items], CONTAINER, headers=paging.link_header(result))


@emulator.post("/courses/<context>/lineitems")
@request_log.logged
def create_line_item(context: str) -> Response:
    guard.require(c.SCOPE_LINEITEM)
    rt = site.current_rt()
    _course(rt, context)
    item = store.add_line_item(rt, context, _line_item_fields(rt, context, _body(LINE_ITEM)))
    body = shown(rt, context, item)
    return _answer(body, LINE_ITEM, 201, {"Location": body["id"]})


@emulator.get("/courses/<context>/lineitems/<item_id>")
@request_log.logged
def get_line_item(context: str, item_id: str) -> Response:
    guard.require(*READ_ITEMS)
    rt = site.current_rt()
    return _answer(shown(rt, context, _item(rt, context, item_id)), LINE_ITEM)


@emulator.put("/courses/<context>/lineitems/<item_id>")
@request_log.logged
def update_line_item(context: str, item_id: str) -> Response:
    guard.require(c.SCOPE_LINEITEM)
    rt = site.current_rt()
    _item(rt, context, item_id)
    body = _body(LINE_ITEM)
    if isinstance(body, dict) and body.get("id") not in (None, site.lineitem_url(rt.settings, context, item_id)):
        raise ServiceError("the id in the body is not this line item's URL")
    item = store.replace_line_item(rt, context, item_id, _line_item_fields(rt, context, body))
    if item is None:
        raise ServiceError(f"no line item {item_id!r} in course {context!r}", 404, "not_found")
    return _answer(shown(rt, context, item), LINE_ITEM)


@emulator.delete("/courses/<context>/lineitems/<item_id>")
@request_log.logged
def delete_line_item(context: str, item_id: str) -> Response:
    guard.require(c.SCOPE_LINEITEM)
    rt = site.current_rt()
    _item(rt, context, item_id)
    store.delete_line_item(rt, context, item_id)
    return Response(status=204)


def _line_item_fields(rt: Runtime, context: str, body: Any) -> dict[str, Any]:
    """The fields of a line item to store, after the spec's checks."""
    if not isinstance(body, dict):
        raise ServiceError("a line item must be a JSON object")
    maximum = body.get("scoreMaximum")
    if isinstance(maximum, bool) or not isinstance(maximum, (int, float)) or not maximum > 0:
        raise ServiceError(f"scoreMaximum must be a number greater than 0; got {maximum!r}")
    if not isinstance(body.get("label"), str) or not body["label"].strip():
        raise ServiceError("label is required")
    fields: dict[str, Any] = {"label": body["label"], "scoreMaximum": maximum}
    for name in OPTIONAL_TEXT:
        if body.get(name) is not None:
            if not isinstance(body[name], str):
                raise ServiceError(f"{name} must be a string")
            fields[name] = body[name]
    for name in OPTIONAL_TIMES:
        if body.get(name) is not None:
            fields[name] = _iso(name, body[name])
    if "gradesReleased" in body:
        fields["gradesReleased"] = bool(body["gradesReleased"])
    if "resourceLinkId" in fields and store.link(rt, context, fields["resourceLinkId"]) is None:
        raise ServiceError(f"resourceLinkId {fields['resourceLinkId']!r} is not a resource link of this course")
    return fields


def _iso(name: str, value: Any) -> str:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ServiceError(f"{name} must be an ISO 8601 date and time; got {value!r}") from None
    return value


# --- Scores and results ------------------------------------------------------------------------------


@emulator.post("/courses/<context>/lineitems/<item_id>/scores")
@request_log.logged
def post_score(context: str, item_id: str) -> Response:
    guard.require(c.SCOPE_SCORE)
    rt = site.current_rt()
    _item(rt, context, item_id)
    score = _body(SCORE)
    try:
        instant = score_rules.check(score)
    except score_rules.ScoreRejected as exc:
        raise ServiceError(str(exc)) from None
    if store.member(rt, context, score["userId"]) is None:
        raise ServiceError(f"userId {score['userId']!r} is not a member of course {context!r}")
    if not store.record_score(rt, context, item_id, score, instant):
        raise ServiceError(f"a score with timestamp {score['timestamp']} is not newer than the last one accepted "
                           f"for user {score['userId']!r} on this line item", 409, "conflict")
    result_url = f"{site.lineitem_url(rt.settings, context, item_id)}/results?{urlencode({'user_id': score['userId']})}"
    return _answer({"resultUrl": result_url}, "application/json")


@emulator.get("/courses/<context>/lineitems/<item_id>/results")
@request_log.logged
def list_results(context: str, item_id: str) -> Response:
    guard.require(c.SCOPE_RESULT_READONLY)
    rt = site.current_rt()
    item = _item(rt, context, item_id)
    latest = store.latest_scores(rt, context, item_id)
    wanted = request.args.get("user_id")
    users = [u for u in sorted(latest) if wanted in (None, u)]
    results = [_result(rt, context, item, latest[u]) for u in users]
    items_url = f"{site.lineitem_url(rt.settings, context, item_id)}/results"
    page = paging.page(results, items_url, default_limit=None)
    return _answer(page.items, RESULTS, headers=paging.link_header(page))


def _result(rt: Runtime, context: str, item: dict[str, Any], score: dict[str, Any]) -> dict[str, Any]:
    """The result a score leaves in the gradebook, scaled to the line item's maximum."""
    item_url = site.lineitem_url(rt.settings, context, item["id"])
    result: dict[str, Any] = {"id": f"{item_url}/results/{score['userId']}", "scoreOf": item_url,
                              "userId": score["userId"], "timestamp": score["timestamp"]}
    if score.get("scoreGiven") is not None:
        result["resultScore"] = score["scoreGiven"] / score["scoreMaximum"] * item["scoreMaximum"]
        result["resultMaximum"] = item["scoreMaximum"]
    if score.get("comment"):
        result["comment"] = score["comment"]
    return result
