"""The Vagrant connector's behaviour on a real Vagrant + vagrant-libvirt + QEMU (TCG) booting the tiny guest:
credentials, one operation at a time per lab, labs in parallel, refusals, orphans and interruptions."""

from __future__ import annotations

import json
import itertools
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import paramiko
import pytest

from broker.connector import LabSpec, ObservedState
from broker.errors import CapacityError, PermanentError
from broker.grading import CheckScript, runner_for
from connectors.credentials import derive
from tests.support.vagrant import tiny_entry, virsh

pytestmark = [pytest.mark.vagrant, pytest.mark.libvirt, pytest.mark.slow, pytest.mark.timeout(900)]

_ids = itertools.count(int(time.time()) % 100_000 * 10 + 1)
INSECURE = sorted(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-2*/keys/vagrant"))


@pytest.fixture
def connector(backend: dict[str, Any]) -> Any:
    from connectors.vagrant.connector import VagrantConnector

    return VagrantConnector("vagrant-real", backend)


@pytest.fixture
def spec(connector: Any) -> Iterator[LabSpec]:
    yield new_spec()


def new_spec(**vagrant: Any) -> LabSpec:
    params = tiny_entry().spec()
    params["backends"]["vagrant"].update(vagrant)
    return LabSpec(lab_id=next(_ids), image="tiny-lab", owner="learner", params=params)


def wait_for(connector: Any, handle: dict[str, Any], state: ObservedState, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while (seen := connector.observe(handle)).state != state:
        assert seen.state == ObservedState.PENDING or state == ObservedState.GONE, seen
        assert time.monotonic() < deadline, f"still {seen}, wanted {state}"
        time.sleep(0.5)
    return seen


def ssh_login(port: int, user: str, password: str | None = None, key: paramiko.PKey | None = None) -> bool:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", port, user, password=password, pkey=key, look_for_keys=False, allow_agent=False, timeout=10)
        return True
    except paramiko.AuthenticationException:
        return False
    finally:
        client.close()


def test_a_hosted_lab_has_its_own_credentials_and_never_the_boxs(connector: Any, spec: LabSpec, backend: dict[str, Any]) -> None:
    handle = connector.provision(spec)
    wait_for(connector, handle, ObservedState.READY)
    endpoint = connector.endpoint(handle)
    secrets = derive(backend["credential_seed"], spec.lab_id)
    assert (endpoint.protocol, endpoint.host, endpoint.username) == ("ssh", "127.0.0.1", "lab")
    assert endpoint.password == secrets.password
    insecure = paramiko.RSAKey.from_private_key_file(str(INSECURE[-1]))
    assert not ssh_login(endpoint.port, "root", key=insecure), "Vagrant's insecure key still opens root"
    assert not ssh_login(endpoint.port, "lab", key=insecure), "Vagrant's insecure key still opens the lab user"
    assert not ssh_login(endpoint.port, "lab", password="lab"), "the box's default password still works"
    assert not ssh_login(endpoint.port, "root", password="lab")
    assert ssh_login(endpoint.port, "lab", password=secrets.password)  # what guacd does for the learner
    lab_dir = Path(backend["state_dir"]) / f"labdesk-lab-{spec.lab_id}"
    on_disk = "".join(p.read_text(errors="replace") for p in lab_dir.rglob("*") if p.is_file())
    assert secrets.password not in on_disk and secrets.service_private_key.split("\n")[1] not in on_disk
    assert not list((lab_dir / ".keys").iterdir()), "a key file outlived its Vagrant call"
    target = connector.check_targets(handle)[0]
    outcome = runner_for(target).run(target, CheckScript("host", "#!/bin/sh\nhostname\n", timeout=30))
    assert outcome.passed and outcome.stdout.strip() == f"labdesk-lab-{spec.lab_id}", outcome


def test_operations_on_one_lab_wait_for_each_other(connector: Any, spec: LabSpec, backend: dict[str, Any]) -> None:
    handle = connector.provision(spec)
    assert connector.observe(handle).state == ObservedState.PENDING  # `up` holds the lab while it runs
    connector.suspend(handle)  # waits for `up` to finish, then suspends
    lab_dir = Path(backend["state_dir"]) / f"labdesk-lab-{spec.lab_id}"
    up = json.loads((lab_dir / "up.json").read_text())
    assert up["state"] == "done"
    assert connector.observe(handle).state == ObservedState.SUSPENDED
    assert "vagrant suspend" not in (lab_dir / "vagrant.log").read_text().split("action,up,end")[0]
    connector.resume(handle)
    wait_for(connector, handle, ObservedState.READY)


def test_different_labs_come_up_in_parallel(connector: Any, backend: dict[str, Any]) -> None:
    specs = [new_spec(), new_spec()]
    handles = [connector.provision(s) for s in specs]
    for handle in handles:
        wait_for(connector, handle, ObservedState.READY)
    ups = [json.loads((Path(backend["state_dir"]) / h["machine"] / "up.json").read_text()) for h in handles]
    assert ups[1]["started"] < ups[0]["finished"], f"the second lab waited for the first: {ups}"
    ports = [connector.endpoint(h).port for h in handles]
    assert len(set(ports)) == 2 and all(backend["forward_ports"][0] <= p <= backend["forward_ports"][1] for p in ports)


def test_a_box_that_is_not_installed_fails_at_once_with_a_clear_message(connector: Any, backend: dict[str, Any]) -> None:
    spec = new_spec(box="labdesk-test/absent")
    with pytest.raises(PermanentError) as failure:
        connector.provision(spec)
    assert "box" in failure.value.user_message and "not installed" in failure.value.user_message
    assert "labdesk boxes add vagrant-real labdesk-test/absent" in str(failure.value)
    assert spec.lab_id not in {m.lab_id for m in connector.list_managed()}


def test_a_template_with_an_unknown_placeholder_is_refused_naming_it(connector: Any) -> None:
    spec = new_spec(template=tiny_entry().spec()["backends"]["vagrant"]["template"] + "\n# ${COURSE_SECRET}\n")
    with pytest.raises(PermanentError, match="COURSE_SECRET") as failure:
        connector.provision(spec)
    assert failure.value.user_message == "This lab's Vagrant set-up is broken. Please tell your instructor."
    assert spec.lab_id not in {m.lab_id for m in connector.list_managed()}


def test_capacity_counts_the_labs_on_the_host(backend: dict[str, Any]) -> None:
    from connectors.vagrant.connector import VagrantConnector

    present = len(list(Path(backend["state_dir"]).glob("labdesk-lab-*")))
    full = VagrantConnector("vagrant-full", {**backend, "max_labs": max(present, 1)})
    if present == 0:
        Path(backend["state_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(backend["state_dir"]) / "labdesk-lab-1").mkdir()
        (Path(backend["state_dir"]) / "labdesk-lab-1" / "lab.json").write_text("{}")
    try:
        with pytest.raises(CapacityError):
            full.provision(new_spec())
    finally:
        shutil.rmtree(Path(backend["state_dir"]) / "labdesk-lab-1", ignore_errors=True)


def test_a_machine_whose_directory_vanished_is_found_and_destroyed(connector: Any, spec: LabSpec, backend: dict[str, Any]) -> None:
    handle = connector.provision(spec)
    wait_for(connector, handle, ObservedState.READY)
    shutil.rmtree(Path(backend["state_dir"]) / handle["machine"])
    orphan = [m for m in connector.list_managed() if m.lab_id == spec.lab_id]
    assert orphan, "neither the spare copy nor global-status reported the machine"
    domain = backend["provider_options"]["default_prefix"] + handle["machine"]
    assert domain in virsh(backend["provider_options"]["uri"], "list", "--all", "--name")
    connector.delete(orphan[0].handle)
    assert domain not in virsh(backend["provider_options"]["uri"], "list", "--all", "--name")
    assert spec.lab_id not in {m.lab_id for m in connector.list_managed()}


def test_an_up_whose_runner_was_killed_is_started_again(connector: Any, spec: LabSpec, backend: dict[str, Any]) -> None:
    handle = connector.provision(spec)
    lab_dir = Path(backend["state_dir"]) / handle["machine"]
    pid = json.loads((lab_dir / "up.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)  # the runner and the vagrant it runs
    time.sleep(0.5)
    wait_for(connector, handle, ObservedState.READY)
    assert json.loads((lab_dir / "lab.json").read_text())["up_attempts"] == 2


def test_a_machine_switched_off_behind_labdesks_back_is_reported(connector: Any, spec: LabSpec, backend: dict[str, Any]) -> None:
    handle = connector.provision(spec)
    wait_for(connector, handle, ObservedState.READY)
    virsh(backend["provider_options"]["uri"], "destroy", backend["provider_options"]["default_prefix"] + handle["machine"])
    seen = connector.observe(handle)
    assert (seen.state, seen.message) == (ObservedState.ERROR, "The lab machine was switched off.")
    connector.delete(handle)
    assert connector.observe(handle).state == ObservedState.GONE


def test_a_machine_lost_with_its_spare_copy_stays_reported_with_what_to_do(connector: Any, spec: LabSpec, backend: dict[str, Any]) -> None:
    handle = connector.provision(spec)
    wait_for(connector, handle, ObservedState.READY)
    state_dir = Path(backend["state_dir"])
    shutil.rmtree(state_dir / handle["machine"])
    shutil.rmtree(state_dir / ".spares" / handle["machine"])
    uri, domain = backend["provider_options"]["uri"], backend["provider_options"]["default_prefix"] + handle["machine"]
    try:
        orphan = [m for m in connector.list_managed() if m.lab_id == spec.lab_id]
        assert orphan and orphan[0].handle["machine_id"], "global-status did not report the machine"
        with pytest.raises(PermanentError, match="remove it with the provider's own tools"):
            connector.delete(orphan[0].handle)
        still = [m for m in connector.list_managed() if m.lab_id == spec.lab_id]
        assert still, "a machine nobody can destroy went unreported"
        with pytest.raises(PermanentError, match=orphan[0].handle["machine_id"]):
            connector.delete(still[0].handle)
    finally:
        virsh(uri, "destroy", domain, check=False)
        virsh(uri, "undefine", domain, "--managed-save", check=False)
        from connectors.vagrant.cli import VagrantCli

        VagrantCli(Path(backend["home"])).run("global-status", "--prune", timeout=60)
        shutil.rmtree(state_dir / ".lost", ignore_errors=True)


def test_a_backend_that_suspends_by_halting_powers_off_and_boots_again(backend: dict[str, Any]) -> None:
    from connectors.vagrant.connector import VagrantConnector

    connector = VagrantConnector("vagrant-halt", {**backend, "suspend_by": "halt"})
    spec = new_spec()
    handle = connector.provision(spec)
    wait_for(connector, handle, ObservedState.READY)
    connector.suspend(handle)
    assert connector.observe(handle).state == ObservedState.SUSPENDED
    domain = backend["provider_options"]["default_prefix"] + handle["machine"]
    info = virsh(backend["provider_options"]["uri"], "dominfo", domain)
    assert "shut off" in info and "Managed save:   no" in info  # powered off, nothing saved
    connector.resume(handle)
    wait_for(connector, handle, ObservedState.READY)
    assert ssh_login(connector.endpoint(handle).port, "lab", password=derive(backend["credential_seed"], spec.lab_id).password)
    connector.delete(handle)
