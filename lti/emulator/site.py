"""Who the emulator is and where everything lives: its identity, its URLs and the tool's URLs.

Every URL the emulator hands out (in id_tokens, registrations, Link headers) is built here from the
settings, so a deployment behind a proxy (`emulator_url`, `public_url`) gets consistent absolute URLs.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import current_app

from broker.config import Settings
from broker.runtime import Runtime

CLIENT_ID = "labdesk-emulator"
DEPLOYMENT_ID = "emulator-deployment-1"
COURSE_ID = "demo-course"
NAME = "LabDesk LMS emulator"


def current_rt() -> Runtime:
    """The runtime the composition root attached to the app serving this request."""
    return current_app.extensions["labdesk"]


def base_url(settings: Settings) -> str:
    """The emulator's issuer and the prefix of all its URLs."""
    return (settings.emulator_url or settings.public_url.rstrip("/") + "/emulator").rstrip("/")


def issuer(settings: Settings) -> str:
    return base_url(settings)


def url(settings: Settings, path: str) -> str:
    return base_url(settings) + path


def auth_url(settings: Settings) -> str:
    return url(settings, "/auth")


def token_url(settings: Settings) -> str:
    return url(settings, "/token")


def jwks_url(settings: Settings) -> str:
    return url(settings, "/jwks")


def deep_link_return_url(settings: Settings) -> str:
    return url(settings, "/deep-link-return")


def course_page_url(settings: Settings, context: str) -> str:
    return url(settings, "/") if context == COURSE_ID else url(settings, f"/courses/{quote(context)}")


def lineitems_url(settings: Settings, context: str) -> str:
    return url(settings, f"/courses/{quote(context)}/lineitems")


def lineitem_url(settings: Settings, context: str, item_id: str) -> str:
    return f"{lineitems_url(settings, context)}/{quote(item_id)}"


def memberships_url(settings: Settings, context: str) -> str:
    return url(settings, f"/courses/{quote(context)}/memberships")


def tool_url(settings: Settings, path: str) -> str:
    return settings.public_url.rstrip("/") + path


def tool_login_url(settings: Settings) -> str:
    return tool_url(settings, "/lti/login")


def tool_launch_url(settings: Settings) -> str:
    return tool_url(settings, "/lti/launch")


def tool_jwks_url(settings: Settings) -> str:
    return tool_url(settings, "/lti/jwks")


def redirect_uris(settings: Settings) -> tuple[str, ...]:
    """The redirect URIs registered for the tool: the auth endpoint posts id_tokens nowhere else."""
    return (tool_launch_url(settings),)
