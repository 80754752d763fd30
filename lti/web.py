"""Everything LTI adds to the web application, in one call for the composition root."""

from __future__ import annotations

import threading

from flask import Flask, request

from lti.dashboard import dashboard
from lti.deep_linking import deep_linking
from lti.instructor import instructor
from lti.launch import launch_pages
from lti.registration import registration
from web.context import rt


def register(app: Flask, emulator_enabled: bool) -> None:
    for blueprint in (launch_pages, deep_linking, registration, instructor, dashboard):
        app.register_blueprint(blueprint)
    if emulator_enabled:
        _add_emulator(app)


def _add_emulator(app: Flask) -> None:
    """The emulator registers itself as a platform on the first request of each process, not when the app
    is built: the CLI builds the app before `labdesk db upgrade` has created the tables."""
    from lti.emulator import emulator
    from lti.emulator.registration import ensure_registered

    app.register_blueprint(emulator)
    done = threading.Event()

    @app.before_request
    def _register_emulator() -> None:
        if not done.is_set() and request.blueprint in ("emulator", "lti"):
            ensure_registered(rt())
            done.set()
