"""The `guest_agent` grading hook against a real qemu-guest-agent in a real (TCG) QEMU guest.

The guest is ../shared/tools/tiny-guest's: `build-guest` makes a ~6 MB initrd with qemu-ga and busybox
(cached in /var/tmp/labdesk-tiny-guest, which QEMU, running as libvirt-qemu, must be able to read),
`start-libvirtd` starts libvirtd + virtlogd without systemd (nothing if one already answers), and one
domain per session is defined from `examples/domain-tiny.xml.in` under a unique name (tests/support/libvirt.py
does all of that). At the end the domain is destroyed and undefined, and libvirtd is stopped only if it was
started for these tests.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterator

import pytest

from broker.grading import CheckScript, CheckTarget, runner_for
from grading_hooks.guest_agent import GuestAgentRunner
from tests.support.http import free_port
from tests.support.libvirt import Guest, running_libvirtd, tiny_domain_xml, wait_for_agent

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    with running_libvirtd() as uri:
        import libvirt

        connection = libvirt.open(uri)
        name = f"labdesk-pytest-{secrets.token_hex(4)}"
        console = tmp_path_factory.mktemp("tiny-guest") / "console.log"
        domain = connection.defineXML(tiny_domain_xml(name, free_port(), console))
        try:
            domain.create()
            wait_for_agent(domain, console=console)  # about 5 s under TCG
            yield Guest(uri, name, domain.UUIDString(), domain)
        finally:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
            connection.close()


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
