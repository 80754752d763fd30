"""Deep linking: the instructor's lab picker and the signed response back to the platform.

The launch endpoint validates the `LtiDeepLinkingRequest`, keeps the `Launch` in Redis (`lti.handoff`),
appends the token to `session["deep_links"]` and redirects here. A token therefore works only in the
browser that made the launch, and only once: answering (with labs or with a cancel) removes it, because a
platform must not receive two responses to one request.

Routes:

- `GET /lti/deep-link/<token>`: the picker over the newest version of every catalogue image.
- `POST /lti/deep-link/<token>`: validates the choice and answers with a page that auto-posts the signed
  `LtiDeepLinkingResponse` (field `JWT`) to the platform's `deep_link_return_url`. The submit button named
  `action` with value `cancel` answers with no content items, the spec's way to cancel.
"""

from __future__ import annotations

import calendar
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, render_template, request, session
from werkzeug.datastructures import MultiDict

from broker.clock import utcnow
from lti import handoff, keys
from lti.catalogue_view import LabCard, catalogue, duration_text, number_text
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
from web.csrf import csrf_token
from web.context import rt

deep_linking = Blueprint("deep_linking", __name__, template_folder="templates")

RESOURCE_LINK = "ltiResourceLink"
RESPONSE_LIFETIME = timedelta(minutes=5)
LINEITEM_TAG = "labdesk"
LABEL_MAX = 255
# How the platform should open a lab; "" leaves it to the platform.
PRESENTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "window": ("window", {"targetName": "labdesk"}),
    "iframe": ("iframe", {"width": 1280, "height": 800}),
}


class Refused(Exception):
    """A request the picker cannot serve, answered with a readable page instead of a bare status."""

    def __init__(self, code: int, title: str, advice: str) -> None:
        super().__init__(title)
        self.code, self.title, self.advice = code, title, advice


@deep_linking.errorhandler(Refused)
def _refused(error: Refused):  # type: ignore[no-untyped-def]
    page = render_template("deep_linking/refused.html", code=error.code, title=error.title, advice=error.advice)
    return page, error.code, {"Cache-Control": "no-store"}


GONE_ADVICE = "In your course, add the LabDesk activity again to open a new lab picker."


@dataclass
class Choice:
    """What the instructor chose (or, on first view, the defaults), so a refused form keeps it."""

    chosen: list[str] = field(default_factory=list)
    graded: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)
    scores: dict[str, str] = field(default_factory=dict)
    presentation: str = ""

    @classmethod
    def defaults(cls, labs: list[LabCard]) -> "Choice":
        return cls(
            graded={lab.slug for lab in labs},
            labels={lab.slug: lab.title for lab in labs},
            scores={lab.slug: number_text(lab.max_score) for lab in labs},
        )

    @classmethod
    def of(cls, form: MultiDict[str, str], labs: list[LabCard]) -> "Choice":
        return cls(
            chosen=list(dict.fromkeys(slug for slug in form.getlist("lab") if slug)),
            graded={lab.slug for lab in labs if form.get(f"grade-{lab.slug}")},
            labels={lab.slug: form.get(f"label-{lab.slug}", lab.title).strip() for lab in labs},
            scores={lab.slug: form.get(f"max_score-{lab.slug}", number_text(lab.max_score)).strip() for lab in labs},
            presentation=form.get("presentation", "") if form.get("presentation") in PRESENTATIONS else "",
        )


@deep_linking.get("/lti/deep-link/<token>")
def picker(token: str):  # type: ignore[no-untyped-def]
    launch = _open(token)
    labs = _labs()
    return _picker_page(token, launch, labs, Choice.defaults(labs), []), 200


@deep_linking.post("/lti/deep-link/<token>")
def respond(token: str):  # type: ignore[no-untyped-def]
    launch = _open(token)
    settings = _settings_of(launch)
    items: list[dict[str, Any]] = []
    if request.form.get("action") != "cancel":
        labs = _labs()
        choice = Choice.of(request.form, labs)
        errors = _problems(choice, labs, settings)
        if errors:
            return _picker_page(token, launch, labs, choice, errors), 400
        items = _content_items(choice, labs, settings)
    jwt = keys.signing_key(rt()).sign(response_claims(launch, items))
    _close(token)
    page = render_template("deep_linking/respond.html", return_url=settings.return_url, jwt=jwt, count=len(items))
    return page, 200, {"Cache-Control": "no-store"}


def response_claims(launch: Launch, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The `LtiDeepLinkingResponse`: signed by LabDesk as the platform's client, addressed to the platform."""
    settings = _settings_of(launch)
    now = utcnow()
    claims: dict[str, Any] = {
        "iss": launch.client_id,
        "aud": launch.issuer,
        "iat": _epoch(now),
        "exp": _epoch(now + RESPONSE_LIFETIME),
        "nonce": secrets.token_urlsafe(16),
        DEPLOYMENT_ID: launch.deployment_id,
        MESSAGE_TYPE: DEEP_LINKING_RESPONSE,
        VERSION: "1.3.0",
        DL_CONTENT_ITEMS: items,
    }
    if settings.data is not None:
        claims[DL_DATA] = settings.data  # the platform's own state, returned untouched
    if items:
        claims[DL_MSG] = f"Added {len(items)} lab{'' if len(items) == 1 else 's'}."
    return claims


def content_item(lab: LabCard, choice: Choice, settings: DeepLinkSettings) -> dict[str, Any]:
    """One `ltiResourceLink`; the custom parameters tell the launch which image (and version) it opens."""
    item: dict[str, Any] = {
        "type": RESOURCE_LINK,
        "title": lab.title,
        "text": lab.description,
        "url": rt().settings.public_url.rstrip("/") + "/lti/launch",
        "custom": {"lab": lab.slug, "lab_version": str(lab.version)},
    }
    if choice.presentation:
        key, value = PRESENTATIONS[choice.presentation]
        item[key] = dict(value)
    if settings.accept_lineitem and lab.slug in choice.graded:
        item["lineItem"] = {
            "scoreMaximum": _score(choice.scores[lab.slug]),
            "label": choice.labels[lab.slug] or lab.title,
            "resourceId": lab.slug,
            "tag": LINEITEM_TAG,
        }
    return item


def _content_items(choice: Choice, labs: list[LabCard], settings: DeepLinkSettings) -> list[dict[str, Any]]:
    by_slug = {lab.slug: lab for lab in labs}
    return [content_item(by_slug[slug], choice, settings) for slug in choice.chosen]


def _problems(choice: Choice, labs: list[LabCard], settings: DeepLinkSettings) -> list[str]:
    """Everything wrong with a submitted choice, in words the instructor can act on."""
    if RESOURCE_LINK not in settings.accept_types:
        return [_NO_LINKS]
    known = {lab.slug for lab in labs}
    errors = [f"The lab “{slug}” is not in the catalogue any more. Choose another." for slug in choice.chosen if slug not in known]
    if not choice.chosen:
        errors.append("Choose a lab to add.")
    if len(choice.chosen) > 1 and not settings.accept_multiple:
        errors.append("Your course platform accepts only one lab here. Choose one lab.")
    if settings.accept_lineitem:
        errors += _grading_problems(choice, [lab for lab in labs if lab.slug in choice.chosen])
    return errors


def _grading_problems(choice: Choice, chosen: list[LabCard]) -> list[str]:
    errors = []
    for lab in chosen:
        if lab.slug not in choice.graded:
            continue
        if _score(choice.scores[lab.slug]) is None:
            errors.append(f"The maximum score for “{lab.title}” must be a number greater than 0.")
        if len(choice.labels[lab.slug]) > LABEL_MAX:
            errors.append(f"The gradebook label for “{lab.title}” must be at most {LABEL_MAX} characters.")
    return errors


_NO_LINKS = "Your course platform does not accept lab links from this place, so no lab can be added here."


def _picker_page(token: str, launch: Launch, labs: list[LabCard], choice: Choice, errors: list[str]) -> str:
    settings = _settings_of(launch)
    return render_template(
        "deep_linking/picker.html",
        token=token,
        launch=launch,
        dl=settings,
        accepts_links=RESOURCE_LINK in settings.accept_types,
        no_links=_NO_LINKS,
        labs=labs,
        choice=choice,
        errors=errors,
        csrf=csrf_token(),
        number_text=number_text,
        duration_text=duration_text,
    )


def _open(token: str) -> Launch:
    """The deep-linking launch behind a token, if this browser made it and it has not been answered."""
    if token not in session.get("deep_links", []):
        raise Refused(403, "This lab picker is not open in this browser", GONE_ADVICE)
    launch = handoff.load(rt(), token)
    if launch is None:
        raise Refused(410, "This lab picker has expired or was already used", GONE_ADVICE)
    if launch.message_type != DEEP_LINKING_REQUEST or launch.deep_link is None:
        raise Refused(400, "This launch cannot add labs", GONE_ADVICE)
    if not launch.deep_link.return_url.startswith(("https://", "http://")):
        raise Refused(400, "Your course platform gave no usable return address", GONE_ADVICE)
    return launch


def _close(token: str) -> None:
    """Answer once: a second submission (a double click, the back button, a race) finds the token gone."""
    session["deep_links"] = [kept for kept in session.get("deep_links", []) if kept != token]
    if not handoff.forget(rt(), token):
        raise Refused(410, "This lab picker has expired or was already used", GONE_ADVICE)



def _labs() -> list[LabCard]:
    with rt().session() as db:
        return catalogue(db, rt().settings)


def _settings_of(launch: Launch) -> DeepLinkSettings:
    assert launch.deep_link is not None  # _open refuses launches without it
    return launch.deep_link


def _score(text: str) -> float | int | None:
    """A positive, finite maximum score (whole numbers stay whole in the JSON), or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return int(value) if value.is_integer() else value


def _epoch(moment: datetime) -> int:
    return calendar.timegm(moment.utctimetuple())
