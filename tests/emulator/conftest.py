"""The app with the emulator on, served on a port known before the app is built (the emulator's URLs and
the tool's launch URL are absolute, so `public_url` must name the real port)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from flask import Flask, jsonify
from redis import Redis

from app import create_app
from broker import runtime
from broker.runtime import Runtime
from lti import keys
from lti.emulator import register_with_tool, tool_keys
from tests.conftest import make_settings
from tests.support.http import LiveServer


class _Later:
    """A WSGI app filled in after the server is listening."""

    app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@dataclass(frozen=True)
class Emulated:
    url: str  # the server's root (public_url)
    rt: Runtime
    app: Flask

    @property
    def emulator(self) -> str:
        return self.url + "/emulator"


def _serve_tool_jwks(app: Flask, rt: Runtime) -> None:
    """The tool's key set at /lti/jwks, for as long as the tool's own route is not in the app."""
    if not any(rule.rule == "/lti/jwks" for rule in app.url_map.iter_rules()):
        app.add_url_rule("/lti/jwks", "test_tool_jwks", lambda: jsonify(keys.jwks(rt)))


@pytest.fixture
def emulated(db_url: str, tmp_path: Path, redis_client: Redis) -> Iterator[Emulated]:
    later = _Later()
    server = LiveServer(later)  # type: ignore[arg-type]
    settings = make_settings(db_url, tmp_path, public_url=server.url, emulator=True)
    rt = Runtime(settings, redis=redis_client)
    app = create_app(settings, rt)
    _serve_tool_jwks(app, rt)
    later.app = app
    register_with_tool(rt)
    tool_keys.forget()
    try:
        yield Emulated(server.url, rt, app)
    finally:
        server.close()
        tool_keys.forget()
        runtime.install(None)
