"""Keepalive and leave, served as a bare WSGI route in front of Flask.

These two POSTs are LabDesk's hottest path: every open lab page sends one every 30 s. Through Flask, the
request and response machinery cost about four times the work itself (bench/keepalive.py profiles it),
so they are answered here: the Flask session cookie is verified with Flask's own signing serializer
(verified cookies are cached for a minute: a signed cookie cannot change), ownership is read from it,
and the signal goes to Redis through `activity.SignalBuffer`, in batches. No database is touched.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Iterable

from flask import Flask
from itsdangerous import BadSignature
from werkzeug.http import parse_cookie

from broker import activity
from broker.errors import ServiceUnavailable

ROUTE = re.compile(r"/api/labs/([1-9][0-9]{0,9})/(keepalive|leave)")
CACHE_SECONDS = 60
CACHE_SIZE = 50_000
StartResponse = Callable[..., Any]


class PresenceRoute:
    """WSGI middleware: answers keepalive/leave itself and hands every other request to Flask."""

    def __init__(self, app: Flask, signals: activity.SignalBuffer) -> None:
        self.next = app.wsgi_app
        self.signals = signals
        self.record = {"keepalive": signals.keepalive, "leave": signals.leave}
        self.serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
        self.cookie_name = app.config["SESSION_COOKIE_NAME"]
        self.max_age = app.permanent_session_lifetime.total_seconds()
        self._owned: dict[str, tuple[frozenset[int], float]] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = ROUTE.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or environ.get("REQUEST_METHOD") != "POST":
            return self.next(environ, start_response)
        lab_id, signal = int(match[1]), match[2]
        if lab_id not in self._labs_of(environ):
            return _reply(start_response, "404 NOT FOUND", "Not found", "This lab does not exist or is not yours.")
        try:
            self.record[signal](lab_id)
        except ServiceUnavailable:
            return _reply(start_response, "503 SERVICE UNAVAILABLE", "LabDesk is briefly unavailable",
                          "Nothing was changed. Please try again in a minute.")
        start_response("204 NO CONTENT", [])
        return []

    def _labs_of(self, environ: dict[str, Any]) -> frozenset[int]:
        """The labs this browser's signed session owns; none for a missing, forged or expired cookie."""
        cookie = parse_cookie(environ).get(self.cookie_name)
        if not cookie or self.serializer is None:
            return frozenset()
        now = time.monotonic()
        cached = self._owned.get(cookie)
        if cached and cached[1] > now:
            return cached[0]
        try:
            labs = frozenset(int(lab) for lab in self.serializer.loads(cookie, max_age=self.max_age).get("labs", []))
        except (BadSignature, ValueError, TypeError, AttributeError):
            return frozenset()
        if len(self._owned) >= CACHE_SIZE:
            self._owned.clear()
        self._owned[cookie] = (labs, now + CACHE_SECONDS)
        return labs


def _reply(start_response: StartResponse, status: str, error: str, advice: str) -> list[bytes]:
    body = json.dumps({"error": error, "advice": advice}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
