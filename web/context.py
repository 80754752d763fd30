"""Access to the process runtime and the signed-in user from a request."""

from __future__ import annotations

from flask import abort, current_app, session
from werkzeug.routing import IntegerConverter, Map

from broker.runtime import Runtime


class RowId(IntegerConverter):
    """A database row id in a URL (`<id:lab_id>`): a number too large for the id column is a 404 like any
    unknown id, not a database error and a 500."""

    def __init__(self, url_map: Map, *args: object, **kwargs: object) -> None:
        super().__init__(url_map, min=1, max=2**31 - 1)


def rt() -> Runtime:
    """The runtime that `create_app` attached to this app."""
    return current_app.extensions["labdesk"]


def user_id() -> int:
    """The signed-in user's id, or 401 when nobody is signed in."""
    uid = session.get("user_id")
    if uid is None:
        abort(401)
    return int(uid)


def remember_lab(lab_id: int) -> None:
    labs = [lab for lab in session.get("labs", []) if lab != lab_id][-19:]
    session["labs"] = labs + [lab_id]
