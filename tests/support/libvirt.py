"""A real libvirtd + QEMU (TCG) for integration tests, and the tiny guest of ../shared/tools/tiny-guest.

One copy of what the guest-agent hook's tests and the libvirt connector's tests both need:
* `usable_reason()`: why this machine cannot run them ("" when it can): root on Debian, the tools, libvirt-python;
* `running_libvirtd()`: builds the guest (cached in GUEST_DIR, which QEMU running as libvirt-qemu must be able
  to read, hence /var/tmp), starts libvirtd + virtlogd with `start-libvirtd` only if no libvirtd answers, yields
  the URI, and stops the daemons at the end only if it started them (never one someone else runs);
* `tiny_domain_xml()` fills `examples/domain-tiny.xml.in`; `wait_for_agent()` polls guest-ping;
* `Guest`: a running domain with an `exec` that goes straight through the agent (not through the code under test);
* `qemu_backend()`: a libvirt connector backend on that libvirtd whose pool is a transient dir pool under
  /var/tmp (QEMU runs as libvirt-qemu: every directory above the files must be world-searchable) holding
  links to the guest's vmlinuz and initrd.img and an empty qcow2 base made through the pool API, so each lab
  really gets an overlay (the guest ignores disks); `tiny_params()`: the guest as a catalogue entry.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker.grading import CheckTarget

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("TINY_GUEST_TOOLS", REPO.parent / "shared/tools/tiny-guest"))
GUEST_DIR = Path(os.environ.get("TINY_GUEST_DIR", "/var/tmp/labdesk-tiny-guest"))  # world-searchable
URI = "qemu:///system"
BOOT_TIMEOUT = 120.0  # s: ~5 s under TCG, but libvirt re-probes QEMU for ~56 s per start where /dev/kvm is 0600


@dataclass
class Guest:
    uri: str
    name: str
    uuid: str
    domain: Any  # libvirt.virDomain

    def target(self, **extra: str) -> CheckTarget:
        return CheckTarget(host="main", runner="guest_agent", extra={"uri": self.uri, "domain": self.name, **extra})

    def exec(self, *argv: str, timeout: float = 15.0) -> tuple[int, str]:
        """Run a command in the guest directly through the agent (not the hook): exit status, stdout."""
        return agent_exec(self.domain, *argv, timeout=timeout)


def agent_exec(domain: Any, *argv: str, timeout: float = 15.0) -> tuple[int, str]:
    """guest-exec + guest-exec-status on `domain` through libvirt_qemu: exit status and stdout."""
    import libvirt_qemu

    def agent(execute: str, **arguments: Any) -> Any:
        message = json.dumps({"execute": execute, "arguments": arguments})
        return json.loads(libvirt_qemu.qemuAgentCommand(domain, message, 10, 0))["return"]

    pid = agent("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
    deadline = time.monotonic() + timeout
    while not (status := agent("guest-exec-status", pid=pid))["exited"]:
        assert time.monotonic() < deadline, f"{argv} did not finish in the guest"
        time.sleep(0.1)
    return status.get("exitcode", -1), base64.b64decode(status.get("out-data", "")).decode()


def usable_reason() -> str:
    """Why the real-QEMU tests cannot run here, or "" when they can."""
    if not (TOOLS / "build-guest").exists():
        return f"no tiny-guest tools at {TOOLS}"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "needs root on Debian (tiny-guest's start-libvirtd)"
    try:
        import libvirt  # noqa: F401
        import libvirt_qemu  # noqa: F401
    except ImportError as exc:
        return f"libvirt-python is not installed ({exc})"
    return ""


def answers(uri: str) -> bool:
    import libvirt

    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def unavailable(reason: str) -> None:
    """Skip saying why; under CI=true fail, as scripts/lib.sh does when the real Heat cannot start."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs real libvirt/QEMU: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def running_libvirtd() -> Iterator[str]:
    """The URI of a libvirtd that answers, with the tiny guest built; skips the test when impossible (in
    CI it fails instead: CI must run the real-hypervisor tests, never pass without them)."""
    reason = usable_reason()
    if reason:
        unavailable(reason)
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors still raise libvirtError
    GUEST_DIR.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([TOOLS / "build-guest", GUEST_DIR], capture_output=True, text=True)
    if built.returncode != 0:
        unavailable(f"build-guest failed: {built.stderr.strip()[-500:]}")
    started_daemon = False
    if not answers(URI):
        out = subprocess.run([TOOLS / "start-libvirtd"], capture_output=True, text=True)
        if out.returncode != 0 or not answers(URI):
            unavailable(f"start-libvirtd failed: {(out.stderr or out.stdout).strip()[-500:]}")
        started_daemon = True
    try:
        yield URI
    finally:
        if started_daemon:  # never stop a libvirtd someone else runs
            subprocess.run([TOOLS / "stop-libvirtd"], capture_output=True)


def tiny_domain_xml(name: str, port: int, console: Path) -> str:
    """examples/domain-tiny.xml.in filled in: a TCG domain booting the guest, sshd forwarded to 127.0.0.1:port."""
    xml = (TOOLS / "examples/domain-tiny.xml.in").read_text()
    for key, value in {"@NAME@": name, "@GUEST_DIR@": str(GUEST_DIR), "@PORT@": str(port), "@CONSOLE_LOG@": str(console)}.items():
        xml = xml.replace(key, value)
    return xml


def wait_for_agent(domain: Any, timeout: float = BOOT_TIMEOUT, console: Path | None = None) -> None:
    """Poll guest-ping until the guest's qemu-ga answers; AssertionError (with the console's tail) if never."""
    import libvirt
    import libvirt_qemu

    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt_qemu.qemuAgentCommand(domain, '{"execute":"guest-ping"}', 2, 0)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                tail = console.read_text()[-2000:] if console and console.exists() else ""
                raise AssertionError(f"the guest agent never answered; console: {tail}") from None
            time.sleep(0.25)


KERNEL_CMDLINE = "console=ttyS0 panic=-1 ipv6.disable=1"
TINY_MAC = "52:54:00:ab:cd:99"  # the tiny guest gives 10.0.2.15 (the user-mode forward's target) to this MAC only


@contextmanager
def qemu_backend() -> Iterator[dict[str, Any]]:
    """A libvirt backend config on qemu:///system with a pool of its own; removed afterwards."""
    with running_libvirtd() as uri:
        import libvirt

        conn = libvirt.open(uri)
        directory = Path(tempfile.mkdtemp(prefix="labdesk-pytest-pool-", dir="/var/tmp"))
        directory.chmod(0o755)
        for name in ("vmlinuz", "initrd.img"):
            try:
                os.link(GUEST_DIR / name, directory / name)
            except OSError:
                shutil.copy(GUEST_DIR / name, directory / name)
            (directory / name).chmod(0o644)
        name = f"labdesk-pytest-{secrets.token_hex(4)}"
        pool = conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{directory}</path></target></pool>", 0)
        try:
            first = 44000 + 100 * secrets.randbelow(50)
            pool.createXML("<volume><name>base.qcow2</name><capacity unit='MiB'>64</capacity>"
                           "<target><format type='qcow2'/></target></volume>", 0)
            yield {
                "hosts": [{"name": "local", "uri": uri, "vcpus": 4, "memory_mb": 2048, "pool": name}],
                "domain_type": "qemu",
                "network": {"type": "user"},
                "forward_ports": [first, first + 99],  # each run its own ports and prefix: runs may overlap
                "boot_timeout": BOOT_TIMEOUT,
                "name_prefix": f"ldt{secrets.token_hex(4)}",
                "credential_seed": "real-qemu-" + secrets.token_hex(8),
            }
        finally:
            for volume in pool.listAllVolumes():
                volume.delete(0)
            pool.destroy()
            conn.close()
            shutil.rmtree(directory, ignore_errors=True)


def tiny_params(graphics: str = "vnc") -> dict[str, Any]:
    """The tiny guest as a catalogue entry: kernel boot, the agent, SSH as `lab`, no cloud-init."""
    return {
        "resources": {"vcpu": 1, "ram_mb": 256, "disk_gb": 1},
        "hosts": [{"name": "main", "ports": [{"protocol": "ssh", "port": 22}]}],
        "lab_user": {"name": "lab"},
        "backends": {"libvirt": {
            "base_image": "base.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": KERNEL_CMDLINE,
            "cloud_init": False, "guest_agent": True, "machine": "pc", "graphics": graphics, "mac": TINY_MAC,
        }},
    }
