"""The JSON API of the lab page: lab status. (Keepalive and leave are in `web.presence`, for speed.)"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify
from flask import session as flask_session
from sqlalchemy.orm import Session

from redis.exceptions import RedisError

from broker import endpoints, gpu_queue, gpus, services, usage_limits
from broker.models import Lab
from tunnel.live import watchers_key
from web.context import rt, user_id

api = Blueprint("api", __name__, url_prefix="/api")


@api.get("/labs/<id:lab_id>")
def lab_status(lab_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or not (lab.user_id == user_id() or teaches(session, lab)):
            abort(404)
        answer = lab_json(lab, rt().settings.keepalive_interval)
        answer["hosts"] = endpoints.public_hosts(endpoints.unseal(rt().vault, lab.endpoints))
        answer["watchers"] = watchers(lab.id)
        weekly = usage_limits.status(session, lab) if lab.user_id == user_id() else None
        answer["weekly_limit"] = weekly.as_json() if weekly else None  # the hours left this week (docs/limits.md)
        if lab.waiting_for == gpu_queue.WAITING:  # its place in line moves: told afresh on every poll
            answer["queue"] = gpus.queue_status(session, rt().settings, lab)
            answer["message"] = gpu_queue.waiting_message(answer["queue"] or {})
        return jsonify(answer)


def lab_json(lab: Lab, keepalive_interval: int) -> dict[str, object]:
    """What a browser may know of a lab: never its handle, host or credentials."""
    return {
        "id": lab.id,
        "state": lab.state,
        "progress": lab.progress,
        "message": lab.message,
        "error_kind": "capacity" if lab.waiting_for == "capacity" else ERROR_KINDS.get(lab.state),
        "activity": lab.activity.title,
        "keepalive_interval": lab.activity.keepalive_interval or keepalive_interval,
        "checks": check_count(lab),
    }


def check_count(lab: Lab) -> int:
    """How many grading checks the lab's image defines ("Check my work" shows only when there are some)."""
    checks = (lab.activity.image.spec or {}).get("checks")
    return len(checks) if isinstance(checks, list) else 0


# States the lab page explains with what to do next, rather than a progress bar.
ERROR_KINDS = {"failed": "failed", "deleting": "deleted", "deleted": "deleted"}


def teaches(session: Session, lab: Lab) -> bool:
    """Whether the signed-in user is an instructor of the lab's course (LTI session and database agree):
    they may follow a learner's lab status read-only while watching."""
    course_id = lab.activity.course_id
    return course_id in flask_session.get("instructor_courses", []) and services.is_instructor(session, course_id, user_id())


def watchers(lab_id: int) -> list[str]:
    """The names of instructors watching this lab's desktop now (the tunnel records them)."""
    try:
        return sorted({name.decode() for name in rt().redis.hvals(watchers_key(lab_id))})
    except RedisError:
        return []
