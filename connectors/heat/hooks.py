"""Hook scripts a Heat lab runs on its machines over SSH: before suspend, after resume, before delete.

Why: a guest paused for hours wakes with a stale clock, a nested hypervisor or a licence daemon may need
a nudge, and a lab may want to save work before it is deleted. Hooks come from the backend's `hooks`
setting and the catalogue entry's `[backends.heat.hooks]` (the entry wins per event); each names a
script under the catalogue root. They run on every machine of the lab as `hook_user`, authenticated with
the lab's service key (the public half is passed to the template as `grader_public_key` /
`service_public_key`), each with `hook_timeout`.

Hooks are best effort: a hook that fails or times out is logged and the lab goes on to be suspended,
resumed or deleted anyway, since a lab stuck running because of a hook would cost more than the hook
saves. Write them to be idempotent: after a worker crash one may run twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from broker.errors import ConfigError, ConnectorError
from connectors.heat.outputs import HeatHost
from broker.remote import SshTarget, run_script

log = logging.getLogger(__name__)
EVENTS = ("before_suspend", "after_resume", "before_delete")


@dataclass(frozen=True)
class HookSettings:
    """Who runs hooks and for how long."""

    user: str | None
    timeout: float
    root: Path


def merged_hooks(site: Any, entry: Any) -> dict[str, str]:
    """event -> script path (catalogue-relative); the entry's hooks win over the backend's."""
    hooks: dict[str, str] = {}
    for where, table in (("hooks", site), ("[backends.heat.hooks]", entry)):
        if table in (None, {}):
            continue
        if not isinstance(table, Mapping) or not set(table) <= set(EVENTS):
            raise ConfigError(f"heat {where}: expected a table with keys {', '.join(EVENTS)}, got {table!r}")
        hooks.update({event: str(path) for event, path in table.items()})
    return hooks


def run_hook(event: str, script_path: str, hosts: list[HeatHost], private_key: str, settings: HookSettings, lab: str) -> int:
    """Run one hook on every host; returns how many hosts ran it successfully (failures are logged)."""
    if settings.user is None:
        raise ConfigError("heat backend: hooks are configured but hook_user is not set")
    script = (settings.root / script_path).read_text()
    succeeded = 0
    for host in hosts:
        target = SshTarget(host.address, host.ports.get("ssh", 22), settings.user, private_key)
        try:
            result = run_script(target, script, timeout=settings.timeout)
        except ConnectorError as exc:
            log.warning("%s: %s hook on %s could not run: %s", lab, event, host.name, exc)
            continue
        if result.ok:
            succeeded += 1
        else:
            outcome = "timed out" if result.timed_out else f"exited with {result.exit_status}"
            log.warning("%s: %s hook on %s %s: %s", lab, event, host.name, outcome, result.stderr[-500:])
    return succeeded
