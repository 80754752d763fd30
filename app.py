"""The composition root: the only place that wires Flask, the broker, LTI and the web pages together.

`create_app(settings)` builds the web application; `cli` is the `labdesk` command (a Flask CLI group over
`create_app`, so every command sees the same validated settings and runtime as the web).
"""

from __future__ import annotations

import asyncio
import logging

import click
from flask import Flask
from flask.cli import FlaskGroup, NoAppException

from broker import doctor, runtime
from broker.activity import SignalBuffer
from broker.cli import COMMANDS
from broker.config import Settings, load_settings
from broker.errors import ConfigError
from broker.runtime import Runtime
from broker.secrets import secret_key
from web.api import api
from web.context import RowId
from web.errors import register_error_pages
from web.health import health
from web.pages import pages
from web.csrf import protect
from web.checks import checks
from web.desktop import desktop
from web.vendor import vendor
from web.takeaway import takeaways
from web.presence import PresenceRoute
import web.admin
from werkzeug.middleware.proxy_fix import ProxyFix

import lti.web
from lti.cli import keys, platforms
from lti.doctor_checks import lti_checks
from lti.grades_cli import grades
from tunnel.cli import tunnel
from tunnel.hosts import parse_address, probe


def create_app(settings: Settings | None = None, rt: Runtime | None = None) -> Flask:
    """Build the web application from validated settings (read from the environment when omitted)."""
    settings = settings or load_settings()
    rt = rt or Runtime(settings)
    runtime.install(rt)
    app = Flask("web", static_folder="static", template_folder="templates")
    app.config.update(SECRET_KEY=secret_key(settings), MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES, **cookie_policy(settings))
    app.extensions["labdesk"] = rt
    app.url_map.converters["id"] = RowId
    for blueprint in (pages, api, desktop, checks, takeaways, vendor, health):
        app.register_blueprint(blueprint)
    protect(app)
    lti.web.register(app, settings.emulator)
    web.admin.register(app, settings)
    register_error_pages(app)
    signals = SignalBuffer(rt.redis, settings.presence_batch_ms / 1000)
    app.wsgi_app = PresenceRoute(app, signals)  # type: ignore[method-assign]
    if settings.proxy_hops:
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)  # type: ignore[method-assign]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app


MAX_REQUEST_BYTES = 1024 * 1024
"""No request LabDesk serves needs more: an LTI launch or deep-linking form is a few kB. Without a limit a
URL-encoded form was read whole, whatever its size, whenever no reverse proxy bounded it (docs/fuzzing.md)."""


def cookie_policy(settings: Settings) -> dict[str, object]:
    """Session cookies that survive inside an LMS iframe: over HTTPS they are `SameSite=None; Secure;
    Partitioned` (CHIPS), so browsers that block third-party cookies still keep them, per LMS site.
    Plain-HTTP development (emulator on the same site) keeps `Lax`, since `None` requires `Secure`."""
    https = settings.public_url.startswith("https://")
    return dict(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=https,
        SESSION_COOKIE_SAMESITE="None" if https else "Lax",
        SESSION_COOKIE_PARTITIONED=https,
    )


def _create_for_cli() -> Flask:
    """The app for `labdesk --help`; bad settings must read as one line, and Flask's group prints a full
    traceback for any error other than NoAppException."""
    try:
        return create_app()
    except ConfigError as exc:
        raise NoAppException(f"configuration: {exc}") from None


@click.group(cls=FlaskGroup, create_app=_create_for_cli, add_default_commands=False, add_version_option=False)
def cli() -> None:
    """LabDesk: remote lab desktops for learners."""


for _command in (*COMMANDS, platforms, keys, grades, tunnel):
    cli.add_command(_command)


def _guacd_answers(host: str, timeout: float) -> bool:
    """The tunnel's own guacd probe (a real `select`, expecting `args`), for `labdesk doctor`."""
    return asyncio.run(probe(parse_address(host), timeout))


doctor.add_checks(lambda context: doctor.guacd_checks(context, _guacd_answers))
doctor.add_checks(lti_checks)


if __name__ == "__main__":
    cli()
