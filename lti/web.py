"""Everything LTI adds to the web application, in one call for the composition root."""

from __future__ import annotations

from flask import Flask

from lti.deep_linking import deep_linking
from lti.instructor import instructor
from lti.launch import launch_pages
from lti.registration import registration


def register(app: Flask, emulator_enabled: bool) -> None:
    for blueprint in (launch_pages, deep_linking, registration, instructor):
        app.register_blueprint(blueprint)
    if emulator_enabled:
        from lti.emulator import emulator

        app.register_blueprint(emulator)
