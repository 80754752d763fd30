"""The "Check my work" API of the lab page: start a check of the learner's lab, follow the attempt, and
show the latest one when the page opens.

The checks themselves run in a worker, inside the lab, as the grader (see `broker.attempts` and the
grading hooks); the web only starts an attempt and reads it. What a reader sees depends on who they are:
the lab's owner gets the learner's view (in exam mode without pass/fail, hints or score until the date),
an instructor of the course gets everything; anyone else gets a 404, as for an unknown id.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, url_for
from sqlalchemy.orm import Session

from broker import attempt_views, attempts, services
from broker.errors import ConnectorError, InvalidTransition, LabDeskError, ServiceUnavailable
from broker.models import CheckAttempt, Lab
from web.api import teaches
from web.context import rt, user_id

checks = Blueprint("checks", __name__, url_prefix="/api")

NOT_RUNNING = "Your lab must be running to check your work."
NOT_YOURS = "This lab does not exist or is not yours."
NO_ATTEMPT = "This lab has not been checked yet."
UNKNOWN_ATTEMPT = "This check does not exist or is not yours."


@checks.post("/labs/<id:lab_id>/check")
def start(lab_id: int):  # type: ignore[no-untyped-def]
    """Check the learner's own lab now (or answer with the attempt already under way)."""
    uid = user_id()
    with rt().session() as db:
        lab = db.get(Lab, lab_id)
        if lab is None or lab.user_id != uid:
            return _error(404, NOT_YOURS)
    try:
        attempt_id = attempts.start_check(rt(), uid, lab_id, trigger="learner")
    except services.NotFound:
        return _error(404, NOT_YOURS)
    except InvalidTransition:  # the service's text names states and ids: the learner reads what to do
        return _error(409, NOT_RUNNING)
    except ServiceUnavailable:
        raise  # a 503 page: nothing was started, try again later
    except LabDeskError as exc:
        return _error(400, _sentence(exc))
    return jsonify(attempt=_with_url(attempt_views.attempt_view(rt(), attempt_id, as_instructor=False))), 202


@checks.get("/attempts/<id:attempt_id>")
def attempt(attempt_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        found = db.get(CheckAttempt, attempt_id)
        lab = db.get(Lab, found.lab_id) if found is not None else None
        viewer = _viewer(db, lab, found.user_id if found is not None else None)
    if viewer is None:
        return _error(404, UNKNOWN_ATTEMPT)
    return _view(attempt_id, viewer)


@checks.get("/labs/<id:lab_id>/attempts/latest")
def latest(lab_id: int):  # type: ignore[no-untyped-def]
    """The lab's newest attempt, shown when the lab page opens; 404 before the first check."""
    with rt().session() as db:
        lab = db.get(Lab, lab_id)
        viewer = _viewer(db, lab, lab.user_id if lab is not None else None)
    if viewer is None:
        return _error(404, NOT_YOURS)
    attempt_id = attempt_views.latest_attempt_id(rt(), lab_id)
    if attempt_id is None:
        return _error(404, NO_ATTEMPT)
    return _view(attempt_id, viewer)


def _viewer(db: Session, lab: Lab | None, owner_id: int | None) -> str | None:
    """Who is reading: "instructor" (of the lab's course), "owner" (the learner whose attempt or lab it
    is) or None (anyone else). An instructor checking their own lab sees it as an instructor."""
    if lab is None or owner_id is None:
        return None
    uid = user_id()
    if teaches(db, lab):
        return "instructor"
    return "owner" if owner_id == uid else None


def _view(attempt_id: int, viewer: str):  # type: ignore[no-untyped-def]
    try:
        view = attempt_views.attempt_view(rt(), attempt_id, as_instructor=viewer == "instructor")
    except services.NotFound:
        return _error(404, UNKNOWN_ATTEMPT)
    return jsonify(_with_url(view))


def _with_url(view: dict[str, object]) -> dict[str, object]:
    """The view, with the address the page follows it at."""
    return {**view, "url": url_for("checks.attempt", attempt_id=view["id"])}


def _sentence(error: LabDeskError) -> str:
    """The service's message, or a connector's learner-safe one (never its technical detail)."""
    if isinstance(error, ConnectorError):
        return error.user_message
    return str(error) or "This lab cannot be checked."


def _error(status: int, message: str):  # type: ignore[no-untyped-def]
    return jsonify(error=message), status
