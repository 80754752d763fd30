"""Hook scripts run on the lab's machine over real SSH: before suspend, after resume, before delete.

The lab's "machine" is this host's real sshd on loopback (the test template's outputs point there); the
hook account is a throwaway user who accepts only the lab's derived service key. Each hook appends its
event to ~/hook-events, so the test sees which ran, in which order, as whom.
"""

from __future__ import annotations

import logging
import pwd
from pathlib import Path

import pytest

from broker.connector import ObservedState
from connectors.credentials import derive
from connectors.heat.connector import HeatConnector
from tests.connectors.heat.test_real_heat import drive, new_lab_id
from tests.support.heat import backend_config, heat_endpoints, lab_spec, provider
from tests.support.sshd import Sshd

pytestmark = [pytest.mark.heat, pytest.mark.slow]
HOOKS = {"before_suspend": "hooks/before-suspend.sh", "after_resume": "hooks/after-resume.sh", "before_delete": "hooks/before-delete.sh"}


def events(user: str) -> list[str]:
    path = Path(pwd.getpwnam(user).pw_dir) / "hook-events"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_hooks_run_as_the_hook_user_with_the_labs_key_around_suspend_resume_and_delete(sshd: Sshd) -> None:
    [endpoint] = heat_endpoints(1)
    lab_id = new_lab_id()
    config = backend_config([provider(endpoint, "cloud-a", parameters={"port": sshd.port})], hook_timeout=20)
    user = sshd.add_user(public_key=derive(config["credential_seed"], lab_id).service_public_key)
    connector = HeatConnector("heat-hooks", {**config, "hook_user": user})

    handle, _ = drive(connector, connector.provision(lab_spec(lab_id, hooks=HOOKS)), ObservedState.READY)
    assert events(user) == []
    connector.suspend(handle)
    assert events(user) == ["before_suspend"]  # ran before Heat was asked to suspend
    drive(connector, handle, ObservedState.SUSPENDED)
    connector.resume(handle)
    drive(connector, handle, ObservedState.READY)
    connector.after_resume(handle)
    assert events(user) == ["before_suspend", "after_resume"]
    connector.delete(handle)
    assert events(user) == ["before_suspend", "after_resume", "before_delete"]
    drive(connector, handle, ObservedState.GONE)


def test_a_hook_that_cannot_log_in_is_logged_and_the_lab_is_suspended_anyway(sshd: Sshd, caplog: pytest.LogCaptureFixture) -> None:
    [endpoint] = heat_endpoints(1)
    lab_id = new_lab_id()
    config = backend_config([provider(endpoint, "cloud-a", parameters={"port": sshd.port})], hook_timeout=20)
    user = sshd.add_user()  # the lab's key is not authorized: the hook cannot run
    connector = HeatConnector("heat-hooks", {**config, "hook_user": user})
    handle, _ = drive(connector, connector.provision(lab_spec(lab_id, hooks=HOOKS)), ObservedState.READY)

    with caplog.at_level(logging.WARNING, logger="connectors.heat.hooks"):
        connector.suspend(handle)
    drive(connector, handle, ObservedState.SUSPENDED)
    assert f"before_suspend hook on main could not run: ssh {user}@127.0.0.1:{sshd.port}: authentication failed" in caplog.text
    assert events(user) == []
    connector.delete(handle)
