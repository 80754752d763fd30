"""/admin/guacd: the configured guacd hosts and their health, as the tunnel processes report it.

The page probes nothing itself (a web request must never wait on guacd): every tunnel process checks each
guacd with a real `select` and publishes the result and its sessions in Redis (broker.guacd_status).
"""

from __future__ import annotations

from flask import render_template

from broker.guacd_status import guacd_status
from web.admin.auth import admin, admin_required, current_admin
from web.context import rt


@admin.get("/guacd")
@admin_required
def guacd():  # type: ignore[no-untyped-def]
    settings = rt().settings
    statuses, tunnels = guacd_status(rt().redis, settings.guacd_hosts, settings.guacd_check_interval)
    return render_template("admin/guacd.html", statuses=statuses, tunnels=tunnels,
                           interval=settings.guacd_check_interval, admin=current_admin())
