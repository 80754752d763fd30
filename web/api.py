"""The JSON API of the lab page: lab status, keepalive and leave.

Keepalive is the hottest path in LabDesk (every open lab page, every 30 s), so it touches no database:
ownership is read from the signed session cookie, and the signal is one Redis ZADD.
"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify

from broker import activity
from broker.models import Lab
from web.context import owns, rt, user_id

api = Blueprint("api", __name__, url_prefix="/api")


@api.post("/labs/<id:lab_id>/keepalive")
def keepalive(lab_id: int) -> tuple[str, int]:
    if not owns(lab_id):
        abort(404)
    activity.record_keepalive(rt().redis, lab_id)
    return "", 204


@api.post("/labs/<id:lab_id>/leave")
def leave(lab_id: int) -> tuple[str, int]:
    if not owns(lab_id):
        abort(404)
    activity.record_leave(rt().redis, lab_id)
    return "", 204


@api.get("/labs/<id:lab_id>")
def lab_status(lab_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.user_id != user_id():
            abort(404)
        return jsonify(lab_json(lab, rt().settings.keepalive_interval))


def lab_json(lab: Lab, keepalive_interval: int) -> dict[str, object]:
    """What a browser may know of a lab: never its handle, host or credentials."""
    return {
        "id": lab.id,
        "state": lab.state,
        "progress": lab.progress,
        "message": lab.message,
        "activity": lab.activity.title,
        "keepalive_interval": lab.activity.keepalive_interval or keepalive_interval,
    }
