"""The `guest_agent` grading hook against a real qemu-guest-agent in a real (TCG) QEMU guest.

The guest is ../shared/tools/tiny-guest's: `build-guest` makes a ~6 MB initrd with qemu-ga and busybox
(cached in /var/tmp/labdesk-tiny-guest, which QEMU, running as libvirt-qemu, must be able to read),
`start-libvirtd` starts libvirtd + virtlogd without systemd (nothing if one already answers), and one
domain per session is defined from `examples/domain-tiny.xml.in` under a unique name. At the end the
domain is destroyed and undefined, and libvirtd is stopped only if this fixture started it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker.grading import CheckScript, CheckTarget, runner_for
from grading_hooks.guest_agent import GuestAgentRunner
from tests.support.http import free_port

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("TINY_GUEST_TOOLS", REPO.parent / "shared/tools/tiny-guest"))
GUEST_DIR = Path(os.environ.get("TINY_GUEST_DIR", "/var/tmp/labdesk-tiny-guest"))  # world-searchable
URI = "qemu:///system"


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
        import libvirt_qemu

        def agent(execute: str, **arguments: Any) -> Any:
            message = json.dumps({"execute": execute, "arguments": arguments})
            return json.loads(libvirt_qemu.qemuAgentCommand(self.domain, message, 10, 0))["return"]

        pid = agent("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while not (status := agent("guest-exec-status", pid=pid))["exited"]:
            assert time.monotonic() < deadline, f"{argv} did not finish in the guest"
            time.sleep(0.1)
        return status.get("exitcode", -1), base64.b64decode(status.get("out-data", "")).decode()


def _unusable_reason() -> str:
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


def _answers(uri: str) -> bool:
    import libvirt

    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    reason = _unusable_reason()
    if reason:
        pytest.skip(reason)
    import libvirt
    import libvirt_qemu

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors still raise libvirtError
    GUEST_DIR.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([TOOLS / "build-guest", GUEST_DIR], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"build-guest failed: {built.stderr.strip()[-500:]}")
    started_daemon = False
    if not _answers(URI):
        out = subprocess.run([TOOLS / "start-libvirtd"], capture_output=True, text=True)
        if out.returncode != 0 or not _answers(URI):
            pytest.skip(f"start-libvirtd failed: {(out.stderr or out.stdout).strip()[-500:]}")
        started_daemon = True
    try:
        connection = libvirt.open(URI)
        name = f"labdesk-pytest-{secrets.token_hex(4)}"
        xml = (TOOLS / "examples/domain-tiny.xml.in").read_text()
        console = tmp_path_factory.mktemp("tiny-guest") / "console.log"
        for key, value in {"@NAME@": name, "@GUEST_DIR@": str(GUEST_DIR), "@PORT@": str(free_port()),
                           "@CONSOLE_LOG@": str(console)}.items():
            xml = xml.replace(key, value)
        domain = connection.defineXML(xml)
        try:
            domain.create()
            deadline = time.monotonic() + 90
            while True:  # about 5 s under TCG
                try:
                    libvirt_qemu.qemuAgentCommand(domain, '{"execute":"guest-ping"}', 2, 0)
                    break
                except libvirt.libvirtError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"the guest agent never answered; console: {console.read_text()[-2000:]}")
                    time.sleep(0.25)
            yield Guest(URI, name, domain.UUIDString(), domain)
        finally:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
            connection.close()
    finally:
        if started_daemon:  # never stop a libvirtd someone else runs
            subprocess.run([TOOLS / "stop-libvirtd"], capture_output=True)


def check(script: str, *args: str, timeout: float = 20.0, output_limit: int = 16 * 1024) -> CheckScript:
    return CheckScript(id="t", script=script, args=args, timeout=timeout, output_limit=output_limit)


def test_the_runner_is_installed_under_its_entry_point() -> None:
    runner = runner_for(CheckTarget(host="main", runner="guest_agent"))
    assert isinstance(runner, GuestAgentRunner)


def test_a_passing_check_runs_as_root_with_its_args_in_a_private_directory(guest: Guest) -> None:
    script = 'echo "args: $1 $2"; id -u; ls -ld "$(dirname "$0")"; exit 0'
    outcome = GuestAgentRunner().run(guest.target(), check(script, "one", "two words"))
    assert outcome.error == ""
    assert outcome.exit_status == 0 and outcome.passed
    lines = outcome.stdout.splitlines()
    assert lines[0] == "args: one two words"
    assert lines[1] == "0"
    assert lines[2].startswith("drwx------") and " root " in lines[2]
    assert outcome.stderr == "" and not outcome.timed_out and not outcome.truncated
    assert 0 < outcome.seconds < 20


def test_a_check_may_run_as_another_account(guest: Guest) -> None:
    outcome = GuestAgentRunner().run(guest.target(user="lab"), check('id -un; echo "$1"; test -O "$0" && echo owner', "x y"))
    assert outcome.error == ""
    assert (outcome.exit_status, outcome.stdout) == (0, "lab\nx y\nowner\n")
    assert "labdesk-check-" not in guest.exec("ls", "/tmp")[1]


def test_the_domain_may_be_named_by_uuid(guest: Guest) -> None:
    outcome = GuestAgentRunner().run(guest.target(domain=guest.uuid), check("#!/bin/sh\necho ok\n"))
    assert (outcome.exit_status, outcome.stdout) == (0, "ok\n")


def test_a_failing_check_reports_its_status_and_stderr(guest: Guest) -> None:
    outcome = GuestAgentRunner().run(guest.target(), check("echo partial; echo 'answer.txt should say 42' >&2; exit 3"))
    assert outcome.error == ""
    assert outcome.exit_status == 3 and not outcome.passed
    assert outcome.stdout == "partial\n"
    assert outcome.stderr == "answer.txt should say 42\n"


def test_the_copy_is_removed_afterwards(guest: Guest) -> None:
    outcome = GuestAgentRunner().run(guest.target(), check('echo "$0"'))
    copy = outcome.stdout.strip()
    assert copy.startswith("/tmp/labdesk-check-") and copy.endswith("/check")
    assert guest.exec("test", "-e", copy)[0] != 0
    assert guest.exec("test", "-e", os.path.dirname(copy))[0] != 0
    assert "labdesk-check-" not in guest.exec("ls", "/tmp")[1]


def test_a_hanging_check_times_out_and_its_processes_are_killed(guest: Guest) -> None:
    marker = f"/tmp/pytest-{secrets.token_hex(4)}"
    script = f'echo started; sleep 300 >/dev/null 2>&1 & echo "$$ $!" > {marker}; sleep 300'
    outcome = GuestAgentRunner().run(guest.target(), check(script, timeout=3))
    assert outcome.timed_out and outcome.exit_status is None and not outcome.passed
    assert outcome.error == ""
    assert 3 <= outcome.seconds < 15
    status, pids = guest.exec("cat", marker)
    assert status == 0
    for pid in pids.split():  # the script and the child it left in the background
        assert guest.exec("kill", "-0", pid)[0] != 0, f"process {pid} still runs"
    guest.exec("rm", "-f", marker)
    assert "labdesk-check-" not in guest.exec("ls", "/tmp")[1]


def test_output_over_the_limit_is_truncated(guest: Guest) -> None:
    script = "i=0; while [ $i -lt 400 ]; do echo 0123456789abcdef0123456789abcdef; i=$((i+1)); done; echo err >&2"
    outcome = GuestAgentRunner().run(guest.target(), check(script, output_limit=1000))
    assert outcome.exit_status == 0
    assert outcome.truncated
    assert len(outcome.stdout) == 1000 and outcome.stdout.startswith("0123456789abcdef")
    assert outcome.stderr == "err\n"


def test_an_unknown_domain_is_an_error_not_an_exception(guest: Guest) -> None:
    target = CheckTarget(host="main", runner="guest_agent", extra={"uri": guest.uri, "domain": "no-such-domain"})
    outcome = GuestAgentRunner().run(target, check("exit 0"))
    assert outcome.exit_status is None and not outcome.passed
    assert outcome.error.startswith("guest agent of no-such-domain: ")
    assert "no-such-domain" in outcome.error[len("guest agent of no-such-domain: ") :]


def test_an_unreachable_libvirt_is_an_error_not_an_exception(guest: Guest, tmp_path: Path) -> None:
    target = CheckTarget(
        host="main", runner="guest_agent", extra={"uri": f"qemu+unix:///system?socket={tmp_path}/none", "domain": "x"}
    )
    outcome = GuestAgentRunner().run(target, check("exit 0"))
    assert outcome.exit_status is None and outcome.error.startswith("guest agent of x: ")
