"""The "Take this lab home" API of the lab page: start a take-away export, follow it, download the zip.

The bundle is made by the broker (`broker.takeaway`): at once when the lab keeps no work folder, else by a
worker that reads the folder from the running lab. The web only starts an export and serves the stored
zip. The lab's owner may start one; the owner and an instructor of the course may read and download it;
anyone else gets a 404, as for an unknown id (the same rule as "Check my work", web/checks.py).
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, url_for

from broker import services, takeaway
from broker.errors import InvalidTransition, ServiceUnavailable
from broker.models import Lab
from web.api import teaches
from web.context import rt, user_id

takeaways = Blueprint("takeaway", __name__)

NOT_YOURS = "This lab does not exist or is not yours."
NO_EXPORT = "This lab has not been taken away yet."


@takeaways.post("/api/labs/<id:lab_id>/take-away")
def start(lab_id: int):  # type: ignore[no-untyped-def]
    """Make a bundle of the learner's own lab (or answer with the export under way)."""
    uid = user_id()
    try:
        takeaway.start_export(rt(), uid, lab_id)
    except services.NotFound:
        return _error(404, NOT_YOURS)
    except InvalidTransition as exc:  # the service's sentence says what to do (open the lab first)
        return _error(409, str(exc))
    except takeaway.NotTakeable as exc:
        return _error(400, str(exc))
    except ServiceUnavailable:
        raise  # a 503: nothing was started, try again later
    return jsonify(export=_with_url(takeaway.latest_export(rt(), lab_id))), 202


@takeaways.get("/api/labs/<id:lab_id>/take-away")
def latest(lab_id: int):  # type: ignore[no-untyped-def]
    """The lab's newest export: pending, ready (with its download address) or failed (with why)."""
    if not _may_read(lab_id):
        return _error(404, NOT_YOURS)
    view = takeaway.latest_export(rt(), lab_id)
    if view is None:
        return _error(404, NO_EXPORT)
    return jsonify(_with_url(view))


@takeaways.get("/labs/<id:lab_id>/take-away.zip")
def download(lab_id: int):  # type: ignore[no-untyped-def]
    """The newest ready bundle as a file to save (a page, not JSON, when there is none: a browser opened it)."""
    if not _may_read(lab_id):
        abort(404)
    bundle = takeaway.download(rt(), lab_id)
    if bundle is None:
        abort(404)
    response = Response(bundle.data, mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="{bundle.filename}"'
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _may_read(lab_id: int) -> bool:
    """The lab's owner, or an instructor of its course (as web/checks.py's viewer)."""
    uid = user_id()
    with rt().session() as db:
        lab = db.get(Lab, lab_id)
        return lab is not None and (lab.user_id == uid or teaches(db, lab))


def _with_url(view: dict[str, object] | None) -> dict[str, object] | None:
    """The view with the download address, once there is something to download."""
    if view is None:
        return None
    url = url_for("takeaway.download", lab_id=view["lab_id"]) if view["state"] == "ready" else None
    return {**view, "download_url": url}


def _error(status: int, message: str):  # type: ignore[no-untyped-def]
    return jsonify(error=message), status
