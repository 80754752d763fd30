"""The deep-linking return: the tool's signed LtiDeepLinkingResponse comes back here, and every
`ltiResourceLink` it carries becomes a resource link of the course (with a line item when it asks).

Everything is checked before anything is created, and the request's `data` and `nonce` work once, so a
replayed response adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Response, render_template, request

from broker.runtime import Runtime
from lti import claims as c
from lti.emulator import launches, messages, site, store, tool_keys
from lti.emulator.blueprint import emulator
from lti.emulator.errors import EmulatorError

DL_ERRORMSG = "https://purl.imsglobal.org/spec/lti-dl/claim/errormsg"


@dataclass(frozen=True)
class NewLink:
    title: str
    text: str
    url: str
    custom: dict[str, str]
    presentation: str
    line_item: dict[str, Any] | None = field(default=None)


@emulator.post("/deep-link-return")
def deep_link_return() -> Response:
    rt = site.current_rt()
    store.ensure_seeded(rt)
    claims = _verified(rt, request.form.get("JWT", ""))
    wanted = [_new_link(item) for item in _content_items(claims)]
    _use_once(rt, claims)
    sent = launches.take_deep_link_data(rt, claims[c.DL_DATA])
    if sent is None:
        raise EmulatorError("data is not the value this deep-linking request sent, or it was used already")
    added = [_create(rt, sent["context"], new) for new in wanted]
    page = render_template(
        "emulator/deep_link_done.html", added=added, course_url=site.course_page_url(rt.settings, sent["context"]),
        msg=claims.get(c.DL_MSG, ""), errormsg=claims.get(DL_ERRORMSG, ""),
    )
    return Response(page, 200, mimetype="text/html")


def _verified(rt: Runtime, token: str) -> dict[str, Any]:
    """The response's claims, once its signature and every required claim check out."""
    if not token:
        raise EmulatorError("the JWT form field is missing")
    try:
        claims = tool_keys.verify(rt, token, site.issuer(rt.settings), required=("nonce",))
    except tool_keys.ToolKeysUnavailable as exc:
        raise EmulatorError(str(exc), 503) from None
    except tool_keys.ToolTokenError as exc:
        raise EmulatorError(f"the deep-linking response was refused: {exc}") from None
    expected = {"iss": site.CLIENT_ID, c.MESSAGE_TYPE: c.DEEP_LINKING_RESPONSE, c.VERSION: "1.3.0",
                c.DEPLOYMENT_ID: site.DEPLOYMENT_ID}
    for name, value in expected.items():
        if claims.get(name) != value:
            raise EmulatorError(f"claim {name} must be {value!r}, got {claims.get(name)!r}")
    if not isinstance(claims.get("nonce"), str) or not claims["nonce"]:
        raise EmulatorError("the nonce claim is empty")
    if not isinstance(claims.get(c.DL_DATA), str) or not claims[c.DL_DATA]:
        raise EmulatorError(f"claim {c.DL_DATA} must carry the data value of the request")
    return claims


def _content_items(claims: dict[str, Any]) -> list[dict[str, Any]]:
    items = claims.get(c.DL_CONTENT_ITEMS, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise EmulatorError(f"claim {c.DL_CONTENT_ITEMS} must be a list of objects")
    for item in items:
        if item.get("type") not in messages.ACCEPT_TYPES:
            raise EmulatorError(f"content item type {item.get('type')!r} was not accepted "
                                f"(accept_types: {', '.join(messages.ACCEPT_TYPES)})")
    return items


def _new_link(item: dict[str, Any]) -> NewLink:
    """What one ltiResourceLink content item asks the course to hold."""
    custom = item.get("custom") or {}
    if not isinstance(custom, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in custom.items()):
        raise EmulatorError("custom must be an object of string values")
    title, text, url = (_text(item, name) for name in ("title", "text", "url"))
    if url and not url.startswith(("https://", "http://")):
        raise EmulatorError(f"url must be an http(s) URL, got {url!r}")
    presentation = "window" if "window" in item and "iframe" not in item else "iframe"
    return NewLink(title or "LabDesk activity", text, url, custom, presentation, _line_item(item, title))


def _line_item(item: dict[str, Any], title: str) -> dict[str, Any] | None:
    wanted = item.get("lineItem")
    if wanted is None:
        return None
    if not isinstance(wanted, dict):
        raise EmulatorError("lineItem must be an object")
    maximum = wanted.get("scoreMaximum")
    if isinstance(maximum, bool) or not isinstance(maximum, (int, float)) or not maximum > 0:
        raise EmulatorError(f"lineItem.scoreMaximum must be a number greater than 0, got {maximum!r}")
    fields: dict[str, Any] = {"label": _text(wanted, "label") or title or "LabDesk activity", "scoreMaximum": maximum}
    for name in ("resourceId", "tag"):
        if _text(wanted, name):
            fields[name] = wanted[name]
    return fields


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise EmulatorError(f"{name} must be a string")
    return value or ""


def _use_once(rt: Runtime, claims: dict[str, Any]) -> None:
    if not rt.redis.set(store.key("dl-nonce", claims["nonce"]), "1", nx=True, ex=tool_keys.replay_window(rt)):
        raise EmulatorError("this deep-linking response was received before (its nonce was used)")


def _create(rt: Runtime, context: str, new: NewLink) -> dict[str, Any]:
    link = store.add_link(rt, context, new.title, new.text, new.custom, new.url, new.presentation)
    if new.line_item is not None:
        link["line_item"] = store.add_line_item(rt, context, {**new.line_item, "resourceLinkId": link["id"]})
    return link
