"""Where checks run: each connector's `check_targets`, and a check run through the target it returns.

- the fake backend (broker tests): a `local` target in its state directory, or the configured ones;
- the local connector: a `local` target whose home is the lab's directory, the HOME of its desktop
  (real Xvfb + x11vnc; skips without them);
- Heat: one `ssh` target per host of the stack's outputs, as the grader with the lab's service key. Heat
  itself is a stub answering `stacks.get` here (the real-Heat tests need LABDESK_TEST_HEAT); the SSH side
  is real: the stub's outputs point at the test sshd, where a grader account accepts the lab's derived
  service key with the repository's grader-run forced, as the shipped image's sshd does.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from heatclient import exc as heat_exc

from broker.connector import LabSpec
from broker.errors import PermanentError
from broker.grading import CheckScript, CheckTarget, runner_for
from broker.testing.fake import FakeConnector, reset_memory
from connectors.credentials import derive
from connectors.heat.connector import HeatConnector
from connectors.heat.request import StackRequest
from connectors.local.connector import LocalConnector
from tests.grading.conftest import GRADER_RUN
from tests.support.heat import backend_config
from tests.support.sshd import Sshd


# -- the fake backend -------------------------------------------------------------------------------
@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeConnector]:
    yield FakeConnector("fake-grading", {"state_dir": str(tmp_path / "fake")})
    reset_memory()


def test_fake_targets_its_state_dir_and_checks_run_there(fake: FakeConnector, tmp_path: Path) -> None:
    handle = fake.provision(LabSpec(1, "img", "learner"))
    [target] = fake.check_targets(handle)
    assert target == CheckTarget(host="main", runner="local", extra={"home": str(tmp_path / "fake")})
    outcome = runner_for(target).run(target, CheckScript("c", 'test "$(pwd)" = "$HOME" && echo "$HOME"'))
    assert outcome.passed and outcome.stdout == f"{tmp_path / 'fake'}\n"


def test_fake_targets_come_from_its_settings(tmp_path: Path) -> None:
    configured = [
        {"host": "main", "runner": "ssh", "address": "10.0.0.5", "port": 2222, "private_key": "k", "extra": {"command": "grader-run"}},
        {"host": "router", "runner": "guest_agent"},
    ]
    fake = FakeConnector("fake-configured", {"check_targets": configured})
    try:
        handle = fake.provision(LabSpec(2, "img", "learner"))
        main, router = fake.check_targets(handle)
        assert main == CheckTarget("main", "ssh", "10.0.0.5", 2222, "grader", "k", {"command": "grader-run"})
        assert router == CheckTarget("router", "guest_agent")
        home = FakeConnector("fake-home", {"check_home": str(tmp_path)})
        assert home.check_targets(home.provision(LabSpec(3, "img", "learner")))[0].extra == {"home": str(tmp_path)}
        memory = FakeConnector("fake-memory", {})
        [target] = memory.check_targets(memory.provision(LabSpec(4, "img", "learner")))
        assert Path(target.extra["home"]).is_dir() and Path(target.extra["home"]).stat().st_mode & 0o777 == 0o700
    finally:
        reset_memory()


def test_fake_check_targets_of_a_gone_lab_or_a_scripted_failure(fake: FakeConnector) -> None:
    handle = fake.provision(LabSpec(5, "img", "learner"))
    fake.delete(handle)
    with pytest.raises(PermanentError):
        fake.check_targets(handle)
    failing = FakeConnector("fake-failing", {"fail": {"check_targets": "transient"}})
    try:
        with pytest.raises(Exception, match="scripted transient failure in check_targets"):
            failing.check_targets(failing.provision(LabSpec(6, "img", "learner")))
    finally:
        reset_memory()


# -- the local connector ------------------------------------------------------------------------------
@pytest.mark.desktop
def test_local_lab_checks_run_in_the_labs_home(tmp_path: Path) -> None:
    for program in ("Xvfb", "x11vnc"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} not installed: apt-get install xvfb x11vnc")
    connector = LocalConnector("local-grading", {"state_dir": str(tmp_path / "state"), "command": "", "window_manager": ""})
    handle = connector.provision(LabSpec(11, "desktop", "learner"))
    try:
        [target] = connector.check_targets(handle)
        assert target == CheckTarget(host="main", runner="local", extra={"home": handle["dir"]})
        # The desktop's own HOME (its supervisor's environment) is the same directory.
        supervisor = Path(f"/proc/{_record_pid(handle)}/environ").read_bytes().split(b"\0")
        assert f"HOME={handle['dir']}".encode() in supervisor
        (Path(handle["dir"]) / "answer.txt").write_text("42\n")
        outcome = runner_for(target).run(target, CheckScript("c", "grep -qx 42 ~/answer.txt && echo ok"))
        assert outcome.passed and outcome.stdout == "ok\n"
    finally:
        connector.delete(handle)
    with pytest.raises(PermanentError):
        connector.check_targets(handle)


def _record_pid(handle: dict[str, Any]) -> int:
    from connectors.local import labs

    record = labs.read_record(Path(handle["dir"]))
    assert record is not None
    return record.pid


# -- Heat, with a stub Heat and a real sshd --------------------------------------------------------------
class _Stacks:
    def __init__(self, stacks: dict[str, Any]) -> None:
        self.stacks = stacks

    def get(self, stack_id: str) -> Any:
        if stack_id not in self.stacks:
            raise heat_exc.HTTPNotFound()
        return self.stacks[stack_id]


def heat_lab(outputs: dict[str, Any], status: str = "CREATE_COMPLETE", lab_id: int = 7, **settings: Any) -> tuple[HeatConnector, dict[str, Any]]:
    """A Heat connector whose only provider is a stub holding one stack with these outputs."""
    config = backend_config([{"name": "cloud-a", "endpoint": "http://127.0.0.1:9", "token": "test"}], **settings)
    connector = HeatConnector("heat-grading", config)
    stack = SimpleNamespace(
        id="stack-1", stack_name="lab-7", stack_status=status, outputs=[{"output_key": k, "output_value": v} for k, v in outputs.items()]
    )
    connector._clients["cloud-a"] = SimpleNamespace(stacks=_Stacks({"stack-1": stack}))
    request = StackRequest(lab_id=lab_id, template="heat/lab.yaml", protocol="ssh")
    handle = {"lab_id": lab_id, "provider": "cloud-a", "stack_id": "stack-1", "stack_name": "lab-7", "request": request.to_json()}
    return connector, handle


def test_heat_targets_every_host_as_the_grader_with_the_labs_service_key() -> None:
    hosts = [
        {"name": "main", "address": "10.0.0.5", "ports": {"ssh": 2222, "vnc": 5901}},
        {"name": "router", "address": "10.0.0.6", "ports": {"vnc": 5900}},
    ]
    connector, handle = heat_lab({"hosts": hosts})
    key = derive(connector.config["credential_seed"], 7).service_private_key
    main, router = connector.check_targets(handle)
    assert main == CheckTarget("main", "ssh", "10.0.0.5", 2222, "grader", key, {"command": "grader-run"})
    assert router == CheckTarget("router", "ssh", "10.0.0.6", 22, "grader", key, {"command": "grader-run"})

    other, handle = heat_lab({"public_ip": "10.0.0.9"}, grader_user="checker", grader_command="")
    [target] = other.check_targets(handle)
    assert (target.host, target.address, target.port, target.user, dict(target.extra)) == ("main", "10.0.0.9", 22, "checker", {})


def test_heat_check_targets_of_a_gone_or_broken_stack() -> None:
    connector, handle = heat_lab({"public_ip": "10.0.0.9"}, status="DELETE_COMPLETE")
    with pytest.raises(PermanentError, match="gone"):
        connector.check_targets(handle)
    connector, handle = heat_lab({"public_ip": "10.0.0.9"})
    with pytest.raises(PermanentError, match="gone"):
        connector.check_targets({**handle, "stack_id": "missing"})
    with pytest.raises(PermanentError):
        connector.check_targets({"lab_id": 7, "provider": "cloud-a", "stack_id": "stack-1"})  # a leftover
    broken, handle = heat_lab({"nothing": 1})
    with pytest.raises(PermanentError, match="neither a 'public_ip' nor a 'hosts'"):
        broken.check_targets(handle)


@pytest.mark.slow
def test_a_heat_lab_is_checked_through_grader_run_with_its_derived_key(sshd: Sshd) -> None:
    connector, handle = heat_lab({"hosts": [{"name": "main", "address": sshd.host, "ports": {"ssh": sshd.port}}]}, lab_id=8)
    public = derive(connector.config["credential_seed"], 8).service_public_key
    grader = sshd.add_user(public_key=public, key_options=f'restrict,command="{GRADER_RUN}"')
    try:
        connector.config["grader_user"] = grader
        [target] = connector.check_targets(handle)
        started = time.monotonic()
        outcome = runner_for(target).run(target, CheckScript("c", "#!/bin/sh\nid -un\ntest \"$1\" = ok\n", args=("ok",), timeout=20))
        assert outcome.passed and outcome.stdout == f"{grader}\n", outcome
        assert time.monotonic() - started < 10
        refused = runner_for(target).run(target, CheckScript("c", "#!/bin/sh\nexit 0\n", args=("$(id)",), timeout=20))
        assert refused.exit_status == 126 and "refused argument" in refused.stderr  # grader-run really is in the way
    finally:
        sshd.remove_user(grader)


@pytest.mark.heat
@pytest.mark.slow
def test_a_real_heat_lab_is_checked_on_its_machine(sshd: Sshd) -> None:
    """The real standalone Heat creates the test template's stack, whose outputs point at the sshd."""
    from broker.connector import ObservedState
    from tests.connectors.heat.test_real_heat import drive, new_lab_id
    from tests.support.heat import heat_endpoints, lab_spec, provider

    [endpoint] = heat_endpoints(1)
    lab_id = new_lab_id()
    config = backend_config([provider(endpoint, "cloud-a", parameters={"port": sshd.port})])
    grader = sshd.add_user(public_key=derive(config["credential_seed"], lab_id).service_public_key,
                           key_options=f'restrict,command="{GRADER_RUN}"')
    connector = HeatConnector("heat-grading-real", {**config, "grader_user": grader})
    handle, _ = drive(connector, connector.provision(lab_spec(lab_id)), ObservedState.READY)
    try:
        [target] = connector.check_targets(handle)
        assert (target.address, target.port, target.user, dict(target.extra)) == ("127.0.0.1", sshd.port, grader, {"command": "grader-run"})
        outcome = runner_for(target).run(target, CheckScript("c", "#!/bin/sh\nid -un\n", timeout=20))
        assert outcome.passed and outcome.stdout == f"{grader}\n", outcome
    finally:
        connector.delete(handle)
        drive(connector, handle, ObservedState.GONE)
        sshd.remove_user(grader)
