"""Readable error pages and JSON errors: a learner sees what happened and what to do, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from broker.errors import InvalidTransition, ServiceUnavailable
from broker.services import LaunchRefused, NotFound

log = logging.getLogger(__name__)

MESSAGES = {
    401: ("Please sign in", "Open this lab from your course page again."),
    404: ("Not found", "This lab does not exist or is not yours."),
    409: ("Not possible right now", "The lab is busy with another change. Wait a moment and try again."),
    413: ("This request is too large", "LabDesk accepts at most 1 MB in one request. Nothing was changed."),
    503: ("LabDesk is briefly unavailable", "Nothing was changed. Please try again in a minute."),
}


def register_error_pages(app: Flask) -> None:
    app.register_error_handler(HTTPException, lambda e: _page(e.code or 500, e.description))
    app.register_error_handler(ServiceUnavailable, lambda e: _logged(503, e))
    app.register_error_handler(RedisError, lambda e: _logged(503, e))
    app.register_error_handler(OperationalError, lambda e: _logged(503, e))  # the database is down or unreachable
    app.register_error_handler(NotFound, lambda e: _page(404, str(e)))
    app.register_error_handler(InvalidTransition, lambda e: _page(409, str(e)))
    app.register_error_handler(LaunchRefused, lambda e: _page(403, str(e), "This lab cannot open now"))


def _logged(code: int, error: Exception):  # type: ignore[no-untyped-def]
    log.warning("%s %s: %s", request.method, request.path, error)
    return _page(code, "")


def _page(code: int, detail: str | None, refusal: str = ""):  # type: ignore[no-untyped-def]
    title, advice = MESSAGES.get(code, ("Something went wrong", "Please try again."))
    if refusal:  # a sentence written for the learner (services.LaunchRefused), under its own title
        title, advice = refusal, detail or advice
    if code == 400 and detail:  # our own sentence saying what was wrong with the request
        title, advice = "This request cannot be handled", detail
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        return jsonify(error=title, advice=advice), code
    return render_template("error.html", code=code, title=title, advice=advice), code
