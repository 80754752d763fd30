"""The console's pages: sign-in and sign-out, the dashboard, the audit log."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, redirect, render_template, request, url_for
from sqlalchemy import func, select

from broker import admins, audit
from broker.models import AuditEvent, Backend, Lab
from broker.schedule import DURATIONS_KEY, HEALTH_KEY
from web.admin import oidc
from web.admin.auth import (
    actor, admin, admin_required, client_address, count_failure, current_admin, end_session, forget_failures,
    locked_for, safe_next, start_session,
)
from web.context import rt

# The console's sections (issue 10); each is linked once its endpoint exists.
SECTIONS = [
    ("Dashboard", "admin.dashboard"), ("Platforms", "admin.platforms"), ("Backends", "admin.backends"),
    ("Images", "admin.images"), ("guacd", "admin.guacd"), ("Labs", "admin.labs"), ("Jobs", "admin.jobs"),
    ("Usage", "admin.usage"), ("Audit log", "admin.audit_log"),
]
AUDIT_PAGE = 50
REFUSED = "Wrong username or password."


@admin.app_context_processor
def _navigation() -> dict[str, Any]:
    return {"admin_sections": [(label, ep, ep in current_app.view_functions) for label, ep in SECTIONS]}


def _login_page(error: str = "", status: int = 200) -> tuple[str, int]:
    settings = rt().settings
    expired = request.args.get("expired") == "1"
    return render_template(
        "admin/login.html", error=error, expired=expired, next=request.values.get("next", ""),
        oidc_name=settings.admin_oidc_name if oidc.client() else "",
    ), status


@admin.get("/login")
def login():  # type: ignore[no-untyped-def]
    return _login_page()


@admin.post("/login")
def login_password():  # type: ignore[no-untyped-def]
    username = request.form.get("username", "").strip()[:255]
    password = request.form.get("password", "")
    wait = locked_for(username)
    if wait:
        minutes = (wait + 59) // 60
        return _login_page(f"Too many failed sign-ins for this username. Try again in {minutes} minute{'s' * (minutes != 1)}.", 429)
    with rt().session() as db:
        account = admins.verify_local(db, username, password) if username and password else None
        if account is None:
            audit.record(db, "anonymous", "admin.sign_in_failed", target=f"admin:{username}",
                         detail="wrong username or password", address=client_address())
            db.commit()
            count_failure(username)
            return _login_page(REFUSED, 401)
        audit.record(db, f"admin:{account.username}", "admin.sign_in", detail="password", address=client_address())
        db.commit()
        forget_failures(username)
        start_session(account)
    return redirect(safe_next(request.form.get("next")))


@admin.get("/oidc/login")
def oidc_login():  # type: ignore[no-untyped-def]
    found = oidc.client()
    if found is None:
        return _login_page("Sign-in with an identity provider is not configured.", 404)
    try:
        return oidc.start(found, rt().settings)
    except oidc.OidcFailed as exc:
        return _login_page(f"Sign-in with {rt().settings.admin_oidc_name} is not possible now: {exc}.", 503)


@admin.get("/oidc/callback")
def oidc_callback():  # type: ignore[no-untyped-def]
    found = oidc.client()
    if found is None:
        return _login_page("Sign-in with an identity provider is not configured.", 404)
    try:
        identity = oidc.identity_from_callback(found)
    except oidc.OidcFailed as exc:
        return _oidc_refused("oidc", f"sign-in failed: {exc}", "Sign-in failed: " + str(exc) + ".", 400)
    with rt().session() as db:
        account = admins.link_oidc(db, identity, rt().settings.admin_oidc_allowed)
        if account is None:
            db.rollback()
            who = identity.email or identity.subject
            return _oidc_refused(who, f"not an admin: {identity.issuer} {identity.subject}",
                                 f"{who} is not allowed to use the LabDesk admin console. Ask an admin to add you.", 403)
        audit.record(db, f"admin:{account.username}", "admin.sign_in", detail=f"oidc {identity.issuer}",
                     address=client_address())
        db.commit()
        start_session(account)
    return redirect(url_for("admin.dashboard"))


def _oidc_refused(who: str, detail: str, message: str, status: int) -> tuple[str, int]:
    with rt().session() as db:
        audit.record(db, "anonymous", "admin.sign_in_failed", target=f"oidc:{who}", detail=detail, address=client_address())
        db.commit()
    return render_template("admin/refused.html", message=message), status


@admin.post("/logout")
@admin_required
def logout():  # type: ignore[no-untyped-def]
    with rt().session() as db:
        audit.record(db, actor(), "admin.sign_out", address=client_address())
        db.commit()
    end_session()
    return redirect(url_for("admin.login", signed_out=1))


@admin.get("/")
@admin_required
def dashboard():  # type: ignore[no-untyped-def]
    return render_template("admin/dashboard.html", admin=current_admin(), **_health())


def _health() -> dict[str, Any]:
    """Counts of labs by state, the backends (enabled, draining, last health check) and the sweeps' last runs."""
    redis = rt().redis
    health = {k.decode(): json.loads(v) for k, v in redis.hgetall(HEALTH_KEY).items()}
    sweeps = {k.decode(): float(v) for k, v in redis.hgetall(DURATIONS_KEY).items()}
    with rt().session() as db:
        states = dict(db.execute(select(Lab.state, func.count()).group_by(Lab.state).order_by(Lab.state)).all())
        backends = [
            {"name": b.name, "kind": b.kind, "enabled": b.enabled, "draining": b.draining, "capacity": b.capacity,
             "health": health.get(b.name)}
            for b in db.scalars(select(Backend).order_by(Backend.name))
        ]
    return {"states": states, "backends": backends, "sweeps": sweeps}


@admin.get("/audit")
@admin_required
def audit_log():  # type: ignore[no-untyped-def]
    who, what = request.args.get("actor", "").strip(), request.args.get("action", "").strip()
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if who:
        query = query.where(AuditEvent.actor.startswith(who, autoescape=True))
    if what:
        query = query.where(AuditEvent.action.startswith(what, autoescape=True))
    with rt().session() as db:
        rows = db.scalars(query.offset((page - 1) * AUDIT_PAGE).limit(AUDIT_PAGE + 1)).all()
        events = [{"at": e.at, "actor": e.actor, "action": e.action, "target": e.target, "detail": e.detail,
                   "lab_id": e.lab_id, "address": e.address} for e in rows[:AUDIT_PAGE]]
    return render_template("admin/audit.html", events=events, page=page, more=len(rows) > AUDIT_PAGE,
                           actor=who, action=what, admin=current_admin())
