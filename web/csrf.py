"""CSRF tokens for LabDesk's own forms.

Inside an LMS iframe the session cookie must be `SameSite=None`, so the browser would attach it to a
form posted from any site; a per-session token in every form (or the `X-CSRF-Token` header) proves the
post came from a LabDesk page. Endpoints that other sites post to by design (the LTI login and launch,
the emulator's platform endpoints) are exempt: they carry their own signed proof.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, abort, request, session

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXEMPT_BLUEPRINTS = frozenset({"emulator", "registration"})
EXEMPT_ENDPOINTS = frozenset({"lti.login", "lti.launch"})


def csrf_token() -> str:
    """The session's token, created on first use."""
    token = session.get("csrf_token")
    if token is None:
        token = session["csrf_token"] = secrets.token_urlsafe(24)
    return token


def _check() -> None:
    if request.method in SAFE_METHODS or request.endpoint in EXEMPT_ENDPOINTS:
        return
    if request.blueprint in EXEMPT_BLUEPRINTS:
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf_token", "")
    if not expected or not hmac.compare_digest(sent, expected):
        abort(400, "This form has expired. Go back, reload the page and try again.")


def protect(app: Flask) -> None:
    app.before_request(_check)
    app.jinja_env.globals["csrf_token"] = csrf_token
