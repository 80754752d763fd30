"""The emulated LMS's own pages: the course page that frames the tool, the gradebook, the outage switch,
and the emulator's public key set."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, redirect, render_template, request, url_for

from broker.runtime import Runtime
from lti.claims import DEEP_LINKING_REQUEST, RESOURCE_LINK_REQUEST
from lti.emulator import launches, registration, signing, site, store
from lti.emulator.blueprint import emulator
from lti.emulator.errors import EmulatorError
from lti.emulator.people import NAMED


@emulator.get("/jwks")
def jwks() -> Response:
    answer = jsonify(signing.jwks(site.current_rt().settings))
    answer.headers["Cache-Control"] = "public, max-age=300"
    return answer


@emulator.get("/")
@emulator.get("/courses/<context>")
def course_page(context: str = site.COURSE_ID) -> str:
    rt = site.current_rt()
    course = _course(rt, context)
    registration.ensure_registered(rt)  # the composition root normally did this at start
    named = {p.sub for p in NAMED}
    roster = [p for p in store.members(rt, context) if p.sub in named]
    links, items = store.links(rt, context), store.line_items(rt, context)
    return render_template(
        "emulator/course.html", course=course, links=links, roster=roster, context=context,
        items_by_link={link["id"]: [i for i in items if i.get("resourceLinkId") == link["id"]] for link in links},
        frame=_frame(rt, request.args.get("launch", "")), down=store.outage(rt),
        gradebook_url=url_for("emulator.gradebook", context=context),
        lti_msg=request.args.get("lti_msg", ""), lti_errormsg=request.args.get("lti_errormsg", ""),
    )


@emulator.post("/launch")
def launch() -> Response:
    """A launch button: remember who launches what, then show the course page framing the tool."""
    rt = site.current_rt()
    context = request.form.get("context", site.COURSE_ID)
    _course(rt, context)
    sub = request.form.get("user", "")
    if store.member(rt, context, sub) is None:
        raise EmulatorError(f"user {sub!r} is not a member of this course")
    if request.form.get("deep_linking"):
        hint = launches.LaunchHint(sub, context, "", DEEP_LINKING_REQUEST)
    else:
        link_id = request.form.get("link", "")
        if store.link(rt, context, link_id) is None:
            raise EmulatorError(f"no resource link {link_id!r} in this course")
        hint = launches.LaunchHint(sub, context, link_id, RESOURCE_LINK_REQUEST)
    token = launches.create(rt, hint)
    return redirect(_course_url(context, launch=token), 303)


@emulator.get("/courses/<context>/gradebook")
def gradebook(context: str) -> str:
    rt = site.current_rt()
    course = _course(rt, context)
    items = store.line_items(rt, context)
    latest = {item["id"]: store.latest_scores(rt, context, item["id"]) for item in items}
    graded = {user for scores in latest.values() for user in scores}
    named = {p.sub for p in NAMED}
    rows = [p for p in store.members(rt, context) if p.sub in graded or p.sub in named]
    return render_template("emulator/gradebook.html", course=course, items=items, latest=latest, rows=rows,
                           course_url=_course_url(context))


@emulator.post("/outage")
def outage_switch() -> Response:
    """`{"down": true|false}` as JSON (tests), or the course page's form."""
    rt = site.current_rt()
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("down"), bool):
            raise EmulatorError('send {"down": true} or {"down": false}')
        store.set_outage(rt, body["down"])
        return jsonify(down=store.outage(rt))
    store.set_outage(rt, request.form.get("down") == "1")
    return redirect(_course_url(request.form.get("context", site.COURSE_ID)), 303)


def _course(rt: Runtime, context: str) -> dict[str, Any]:
    store.ensure_seeded(rt)
    course = store.course(rt, context)
    if course is None:
        raise EmulatorError(f"no course {context!r}", 404)
    return course


def _course_url(context: str, **query: str) -> str:
    if context == site.COURSE_ID:
        return url_for("emulator.course_page", **query)
    return url_for("emulator.course_page", context=context, **query)


def _frame(rt: Runtime, token: str) -> dict[str, str] | None:
    """The login initiation URLs for the framed tool and for the same launch in a new window."""
    hint = launches.find(rt, token)
    if hint is None:
        return None
    window = launches.create(rt, launches.LaunchHint(hint.sub, hint.context, hint.link_id, hint.message_type, "window"))
    person = store.member(rt, hint.context, hint.sub)
    link = store.link(rt, hint.context, hint.link_id) if hint.link_id else None
    return {
        "src": launches.login_initiation_url(rt, token),
        "window": launches.login_initiation_url(rt, window),
        "who": person.name if person else hint.sub,
        "what": link["title"] if link else "Add a LabDesk activity",
    }
