"""The libvirt connector on a real libvirtd + QEMU (TCG): the tiny guest booted by the connector itself.

One lab is shared by the module's tests, in file order (boot, SSH, grading, suspend/resume, an outside
destroy seen by `watch`, delete): each start costs ~1 min here, where libvirt re-probes QEMU because
/dev/kvm is unusable. The fixture and the guest are tests/support/libvirt.py's.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from broker.connector import DesktopEndpoint, LabSpec, ObservedState
from broker.grading import CheckScript
from connectors.credentials import derive
from tests.support.libvirt import BOOT_TIMEOUT, agent_exec, qemu_backend, tiny_params

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.timeout(600)]

LAB_ID = 880000 + int(time.time()) % 10000


class Lab:
    def __init__(self, connector: Any, spec: LabSpec, config: dict[str, Any]) -> None:
        self.connector = connector
        self.spec = spec
        self.config = config
        self.handle = connector.provision(spec)

    def wait_for(self, state: ObservedState, timeout: float = BOOT_TIMEOUT + 30) -> float:
        started = time.monotonic()
        seen = self.connector.observe(self.handle)
        while seen.state != state:
            assert seen.state in (ObservedState.PENDING, ObservedState.READY, ObservedState.SUSPENDED), seen
            assert time.monotonic() - started < timeout, f"still {seen} after {timeout}s"
            time.sleep(0.5)
            seen = self.connector.observe(self.handle)
        return time.monotonic() - started

    def domain(self) -> Any:
        return self.connector.connection("local").lookupByName(self.handle["domain"])

    def ssh(self, command: str, password: str | None = None, key: str | None = None, user: str = "lab") -> str:
        import paramiko

        endpoint = self.connector.endpoint(self.handle)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(key)) if key else None
        client.connect(endpoint.host, endpoint.port, username=user, password=password, pkey=pkey, timeout=10,
                       allow_agent=False, look_for_keys=False, banner_timeout=10, auth_timeout=10)
        try:
            _, stdout, _ = client.exec_command(command, timeout=10)
            return stdout.read().decode()
        finally:
            client.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    from connectors.libvirt.connector import LibvirtConnector

    with qemu_backend() as config:
        connector = LibvirtConnector("qemu-real", config)
        spec = LabSpec(lab_id=LAB_ID, image="tiny", owner="learner-1", params=tiny_params(), protocol="ssh")
        booted = Lab(connector, spec, config)
        try:
            yield booted
        finally:
            connector.delete(booted.handle)


def test_ready_once_the_agent_answers(lab: Lab) -> None:
    seconds = lab.wait_for(ObservedState.READY)
    print(f"provision -> READY in {seconds:.1f} s")
    root = lab.domain()
    assert root.isActive()
    assert "<kernel>" in root.XMLDesc(0) and "type='qemu'" in root.XMLDesc(0)


def test_list_managed_finds_it(lab: Lab) -> None:
    assert [(m.lab_id, m.handle["domain"]) for m in lab.connector.list_managed()] == [(LAB_ID, lab.handle["domain"])]


def test_ssh_takes_the_derived_password_and_key_and_no_longer_the_built_in_one(lab: Lab) -> None:
    import paramiko

    creds = derive(lab.config["credential_seed"], LAB_ID)
    endpoints = lab.connector.endpoints(lab.handle)
    ssh: DesktopEndpoint = endpoints[0]
    assert (ssh.protocol, ssh.host, ssh.username, ssh.password) == ("ssh", "127.0.0.1", "lab", creds.password)
    assert lab.ssh("id -un", password=creds.password) == "lab\n"
    assert lab.ssh("id -un", key=ssh.extra["private-key"]) == "lab\n"
    with pytest.raises(paramiko.AuthenticationException):
        lab.ssh("id -un", password="lab")


def test_the_vnc_console_has_the_derived_password(lab: Lab) -> None:
    creds = derive(lab.config["credential_seed"], LAB_ID)
    [vnc] = [e for e in lab.connector.endpoints(lab.handle) if e.protocol == "vnc"]
    assert vnc.password == creds.vnc_password and vnc.name == "main-vnc"
    with socket.create_connection((vnc.host, vnc.port), timeout=5) as conn:
        assert conn.recv(12).startswith(b"RFB ")


def test_a_cloud_init_seed_is_uploaded_through_a_stream(lab: Lab) -> None:
    """The seed path of cloud-init images (the tiny guest has no cloud-init, so no boot reads it here)."""
    import libvirt

    from connectors.libvirt import seed, volumes

    conn = lab.connector.connection("local")
    pool = volumes.pool(conn, lab.config["hosts"][0]["pool"])
    data = seed.seed_iso(seed.user_data("lab", derive("s", 1).password_hash, [], "main"), seed.meta_data("i-1", "main"))
    path = volumes.ensure_seed(conn, pool, "pytest-seed.iso", data)
    try:
        stream = conn.newStream(0)
        pool.storageVolLookupByName("pytest-seed.iso").download(stream, 0, len(data), 0)
        chunks: list[bytes] = []
        stream.recvAll(lambda _s, chunk, out: out.append(chunk), chunks)
        stream.finish()
        assert b"".join(chunks) == data and b"CIDATA" in data.upper()
        assert path.endswith("/pytest-seed.iso")
    finally:
        assert volumes.delete(pool, "pytest-seed.iso")
    with pytest.raises(libvirt.libvirtError):
        pool.storageVolLookupByName("pytest-seed.iso")


def test_a_check_runs_through_check_targets_and_the_guest_agent_hook(lab: Lab) -> None:
    from grading_hooks.guest_agent import GuestAgentRunner

    [target] = lab.connector.check_targets(lab.handle)
    outcome = GuestAgentRunner().run(target, CheckScript(id="t", script="hostname; exit 3", args=(), timeout=20, output_limit=1024))
    assert outcome.error == ""
    assert (outcome.exit_status, outcome.stdout) == (3, "lab-tiny\n")


def test_a_file_survives_suspend_and_resume(lab: Lab) -> None:
    creds = derive(lab.config["credential_seed"], LAB_ID)
    lab.ssh("echo kept > /home/lab/state.txt", password=creds.password)
    started = time.monotonic()
    lab.connector.suspend(lab.handle)
    assert lab.connector.observe(lab.handle).state == ObservedState.SUSPENDED
    assert lab.domain().hasManagedSaveImage(0) and not lab.domain().isActive()
    suspended = time.monotonic() - started
    lab.connector.resume(lab.handle)
    resumed = lab.wait_for(ObservedState.READY)
    print(f"suspend {suspended:.1f} s, resume -> READY {resumed:.1f} s")
    assert lab.ssh("cat /home/lab/state.txt", password=creds.password) == "kept\n"
    assert agent_exec(lab.domain(), "cat", "/home/lab/state.txt") == (0, "kept\n")


def test_an_outside_destroy_reaches_watch_within_seconds(lab: Lab) -> None:
    import libvirt

    seen: list[int] = []
    arrived = threading.Event()

    def notify(lab_id: int) -> None:
        seen.append(lab_id)
        arrived.set()

    stop = threading.Event()
    watcher = threading.Thread(target=lab.connector.watch, args=(notify, stop), daemon=True)
    watcher.start()
    outside = libvirt.open(lab.config["hosts"][0]["uri"])
    try:
        domain = outside.lookupByName(lab.handle["domain"])
        deadline = time.monotonic() + 10
        while not arrived.is_set():  # pause/unpause until the watch is registered
            assert time.monotonic() < deadline, "no event from pause/resume"
            domain.suspend()
            domain.resume()
            arrived.wait(0.5)
        arrived.clear()
        destroyed = time.monotonic()
        domain.destroy()
        assert arrived.wait(5), "the destroy was not notified within 5 s"
        print(f"destroy -> notify in {time.monotonic() - destroyed:.2f} s")
        assert set(seen) == {LAB_ID}
    finally:
        outside.close()
        stop.set()
        watcher.join(10)
    assert not watcher.is_alive()
    seen_now = lab.connector.observe(lab.handle)
    assert seen_now.state == ObservedState.ERROR and "switched off" in seen_now.message


def test_delete_removes_the_domain_and_its_overlay(lab: Lab) -> None:
    pool = lab.connector.connection("local").storagePoolLookupByName(lab.config["hosts"][0]["pool"])
    overlay = f"{lab.handle['domain']}.qcow2"
    assert overlay in {v.name() for v in pool.listAllVolumes()}
    lab.connector.delete(lab.handle)
    assert lab.connector.observe(lab.handle).state == ObservedState.GONE
    pool.refresh(0)
    assert overlay not in {v.name() for v in pool.listAllVolumes()}
    assert lab.connector.list_managed() == []
    lab.connector.delete(lab.handle)
