"""Who is signed in to the admin console, and the rules around it.

The admin identity lives in the Flask session under its own key (`admin`), beside — never mixed with —
a learner's or instructor's LTI identity: an LTI session has no `admin` key, so it never passes
`admin_required`. Sign-in clears the whole session first (no fixation, nothing of another person carries
over). A session ends after `admin_session_max_age` whatever happens, or after `admin_session_idle`
without a request, and at once when the admin is disabled.
"""

from __future__ import annotations

import functools
from datetime import UTC
from typing import Any, Callable

from flask import Blueprint, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from broker.clock import utcnow
from broker.models import Admin
from web.context import rt

admin = Blueprint("admin", __name__, url_prefix="/admin")

SESSION_KEY = "admin"
ATTEMPTS_KEY = "labdesk:admin-login-failures:{username}:{address}"


def _now() -> float:
    return utcnow().replace(tzinfo=UTC).timestamp()


def client_address() -> str:
    """The browser's address (ProxyFix has put the real one here when `proxy_hops` is set)."""
    return request.remote_addr or ""


def start_session(account: Admin) -> None:
    """Rotate the session: drop everything in it (an LTI identity, a pre-sign-in CSRF token), then set the admin."""
    session.clear()
    now = _now()
    session[SESSION_KEY] = {"id": account.id, "username": account.username, "at": now, "seen": now}


def end_session() -> None:
    session.clear()


def current_admin() -> Admin | None:
    """The signed-in, enabled admin (detached row, cached per request), or None; refreshes the idle clock."""
    if "admin_row" in g:
        return g.admin_row
    g.admin_row = _load_admin()
    return g.admin_row


def _load_admin() -> Admin | None:
    data = session.get(SESSION_KEY)
    if not isinstance(data, dict):
        return None
    now, settings = _now(), rt().settings
    if now - data.get("at", 0) > settings.admin_session_max_age or now - data.get("seen", 0) > settings.admin_session_idle:
        session.pop(SESSION_KEY, None)
        g.admin_expired = True
        return None
    with rt().session() as db:
        account = db.get(Admin, data.get("id"))
        if account is None or account.disabled:
            session.pop(SESSION_KEY, None)
            return None
        db.expunge(account)
    session[SESSION_KEY] = {**data, "seen": now}
    return account


def actor() -> str:
    """The audit log's name for the signed-in admin."""
    account = current_admin()
    return f"admin:{account.username}" if account else "anonymous"


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only a signed-in admin gets through: a page request goes to the sign-in page (and back after it);
    a POST or a JSON request gets 403, since redirecting it would lose what it carried."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_admin() is not None:
            return view(*args, **kwargs)
        return _refuse()

    return wrapper


def _refuse() -> Response | tuple[Any, int]:
    expired = g.get("admin_expired", False)
    if request.method == "GET" and request.accept_mimetypes.best != "application/json":
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?"), expired=1 if expired else None))
    advice = "Sign in at /admin/login first."
    if request.accept_mimetypes.best == "application/json" or request.is_json:
        return jsonify(error="Admins only", advice=advice), 403
    return render_template("error.html", code=403, title="Admins only", advice=advice), 403


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: only a path inside the console, never another site."""
    if target and target.startswith("/admin/") and not target.startswith("/admin//") and "\\" not in target:
        return target
    return url_for("admin.dashboard")


@admin.after_request
def no_store(response: Response) -> Response:
    """Admin pages show credentials' metadata and who did what: no cache, shared or private, keeps them."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


# -- failed password sign-ins, counted in Redis per username and address -------------------------------
def _attempts_key(username: str) -> str:
    return ATTEMPTS_KEY.format(username=username.lower()[:255], address=client_address())


def locked_for(username: str) -> int:
    """Seconds until this username may be tried again from this address; 0 when it may be now."""
    key = _attempts_key(username)
    failures = int(rt().redis.get(key) or 0)
    if failures < rt().settings.admin_login_attempts:
        return 0
    return max(int(rt().redis.ttl(key)), 1)


def count_failure(username: str) -> None:
    """One more failure; the window starts at the first failure and is not extended by later ones."""
    key = _attempts_key(username)
    with rt().redis.pipeline() as pipe:
        pipe.set(key, 0, ex=rt().settings.admin_login_window, nx=True)
        pipe.incr(key)
        pipe.execute()


def forget_failures(username: str) -> None:
    rt().redis.delete(_attempts_key(username))
