"""The JSON API of the lab page: lab status. (Keepalive and leave are in `web.presence`, for speed.)"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify

from broker.models import Lab
from web.context import rt, user_id

api = Blueprint("api", __name__, url_prefix="/api")


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
