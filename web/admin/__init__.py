"""The admin console under /admin/: sign-in (password or the institution's OpenID Connect provider),
the dashboard and the audit log. docs/admin.md has the decisions.

Sections other work adds register their views on `admin` (this blueprint) and wrap them in
`web.admin.auth.admin_required`; the navigation links a section as soon as its endpoint exists.
"""

from __future__ import annotations

from flask import Flask

from broker.config import Settings
from web.admin import oidc
from web.admin.auth import admin
from web.admin import pages  # noqa: F401  (its routes register on `admin`)
from web.admin import usage  # noqa: F401,E402  (/admin/usage)
from web.admin import backends, images  # noqa: F401,E402  (/admin/backends, /admin/images)
from web.admin import labs  # noqa: F401,E402  (/admin/labs)
from web.admin import jobs  # noqa: F401,E402  (/admin/jobs)
from web.admin import guacd  # noqa: F401,E402  (/admin/guacd)
from web.admin import platforms  # noqa: F401,E402  (/admin/platforms)


def register(app: Flask, settings: Settings) -> None:
    """Mount the console and, when configured, the OpenID Connect client."""
    app.register_blueprint(admin)
    oidc.setup(app, settings)
