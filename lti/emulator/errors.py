"""How the emulator says no: a readable HTML page to a browser, JSON to a service client, and RFC 6749
errors from the token endpoint.

The app's own error pages show generic advice for learners; a developer pointing a tool at the emulator
needs the exact reason instead, so the emulator's blueprints answer their own errors.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template


class EmulatorError(Exception):
    """Refuse a browser request with a page that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status

    def response(self) -> Response:
        body = render_template("emulator/error.html", status=self.status, message=self.message)
        return Response(body, self.status, mimetype="text/html")


class ServiceError(EmulatorError):
    """Refuse a service (AGS, NRPS) request with a JSON body `{"error", "message"}`."""

    def __init__(self, message: str, status: int = 400, error: str = "invalid_request", headers: dict[str, str] | None = None) -> None:
        super().__init__(message, status)
        self.error, self.headers = error, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message}

    def response(self) -> Response:
        answer = jsonify(self.body())
        answer.status_code = self.status
        answer.headers.update(self.headers)
        return answer


class OAuthError(ServiceError):
    """Refuse a token request the RFC 6749 way: `{"error", "error_description"}`."""

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.message}

    def response(self) -> Response:
        answer = super().response()
        answer.headers["Cache-Control"] = "no-store"
        return answer


def outage() -> ServiceError:
    return ServiceError("the LMS emulator is in a simulated outage", 503, "temporarily_unavailable", {"Retry-After": "5"})


def install(blueprint: Blueprint) -> None:
    blueprint.register_error_handler(EmulatorError, lambda error: error.response())
