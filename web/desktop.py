"""The desktop side of the lab page: connection tokens, the instructor's watch page, and "Reset lab".

A token is minted only for a running lab its holder may open, and says nothing about where the lab
is: the tunnel finds that out itself (see `broker.tunnel_tokens`). What the browser learns is the
tunnel's URL, the host names and their protocols.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, abort, jsonify, render_template, request
from sqlalchemy.orm import Session

from broker import endpoints, services
from broker.config import Settings
from broker.guacd_params import LAYOUTS
from broker.models import Lab
from broker.secrets import secret_key
from broker.tunnel_tokens import Grant, TokenMinter
from web import instructions
from web.api import teaches
from web.context import rt, user_id
from web.pages import STATE_LABELS

desktop = Blueprint("desktop", __name__)


@desktop.post("/api/labs/<id:lab_id>/connection")
def connection(lab_id: int):  # type: ignore[no-untyped-def]
    """A token for the learner's own running lab, for the host asked for (the default one if none)."""
    uid = user_id()
    with rt().session() as db:
        lab = db.get(Lab, lab_id)
        if lab is None or lab.user_id != uid:
            abort(404)
        return _token_answer(lab, uid, watch=False)


@desktop.post("/api/labs/<id:lab_id>/watch-connection")
def watch_connection(lab_id: int):  # type: ignore[no-untyped-def]
    """A read-only token for an instructor of the lab's course, to join the learner's live session."""
    with rt().session() as db:
        lab = _watchable(db, lab_id)
        return _token_answer(lab, user_id(), watch=True)


@desktop.get("/teach/labs/<id:lab_id>/watch")
def watch_page(lab_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        lab = _watchable(db, lab_id)
        return render_template(
            "lab.html", lab=lab, settings=rt().settings, labels=STATE_LABELS, layouts=LAYOUTS,
            watch=True, learner_name=lab.user.name or lab.user.subject,
            instructions=instructions.render(lab.activity.image.spec),
        )


@desktop.post("/api/labs/<id:lab_id>/reset")
def reset(lab_id: int):  # type: ignore[no-untyped-def]
    """Delete the learner's lab and start a fresh one; the page then follows the new lab."""
    try:
        fresh = services.reset(rt(), user_id(), lab_id)
    except services.NotFound:
        abort(404)
    return jsonify({"lab_id": fresh.id}), 202


def _watchable(db: Session, lab_id: int) -> Lab:
    lab = db.get(Lab, lab_id)
    if lab is None:
        abort(404)
    if not teaches(db, lab):
        abort(403, "Only the course's instructors may watch a learner's desktop.")
    return lab


def _token_answer(lab: Lab, uid: int, watch: bool):  # type: ignore[no-untyped-def]
    if lab.state != "running":
        return jsonify({"error": "The lab is not running.", "state": lab.state}), 409
    hosts = endpoints.unseal(rt().vault, lab.endpoints)
    wanted = str((request.get_json(silent=True) or {}).get("host", ""))
    endpoint = endpoints.find(hosts, wanted)
    if endpoint is None:
        return jsonify({"error": f"This lab has no machine called {wanted!r}."}), 404
    grant = Grant(user_id=uid, lab_id=lab.id, host=endpoint.name, read_only=watch, watch=watch)
    return jsonify({
        "token": minter(rt().settings).mint(grant),
        "tunnel_url": tunnel_url(rt().settings),
        "host": endpoint.name,
        "protocol": endpoint.protocol,
        "hosts": endpoints.public_hosts(hosts),
    })


_minters: dict[str, TokenMinter] = {}


def minter(settings: Settings) -> TokenMinter:
    key = secret_key(settings)
    if key not in _minters:
        _minters[key] = TokenMinter(key, settings.tunnel_token_ttl)
    return _minters[key]


def tunnel_url(settings: Settings) -> str:
    """Where browsers reach the tunnel: the setting, else the web's host on the tunnel's port."""
    if settings.tunnel_url:
        return settings.tunnel_url
    public = urlsplit(settings.public_url)
    scheme = "wss" if public.scheme == "https" else "ws"
    port = settings.tunnel_listen.rpartition(":")[2]
    return f"{scheme}://{public.hostname}:{port}/tunnel"
