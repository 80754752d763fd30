"""broker.remote.run_script against a real sshd on loopback (tests/support/sshd.py).

Each test gets a throwaway lab user who may log in with a freshly generated key. The "lab" is this
machine, so a test can look at what the script left behind: its PID in /proc, its copy in /tmp.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from broker.errors import PermanentError, TransientError
from broker.remote import EXIT_LINGER, KILL_GRACE, SshTarget, run_script
from tests.support.http import free_port
from tests.support.sshd import Sshd, generate_key_pair, user_pids
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(sshd: Sshd) -> Iterator[SshTarget]:
    private, public = generate_key_pair()
    user = sshd.add_user(public_key=public)
    yield SshTarget(sshd.host, sshd.port, user, private)
    sshd.remove_user(user)


def home(target: SshTarget) -> Path:
    return Path(pwd.getpwnam(target.user).pw_dir)


def alive(pid: int) -> bool:
    """Running, that is: zombies (ended, waiting for PID 1 to reap them) are not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def script_processes(user: str) -> list[str]:
    """The commands of the user's processes, without the sshd that serves their connection."""
    commands = []
    for pid in user_pids(user):
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except FileNotFoundError:
            continue
    return [command for command in commands if not command.startswith("sshd")]


def test_a_passing_script_gives_its_output_and_exit_status_zero(lab):
    result = run_script(lab, 'echo "hello from $(id -un)"\necho "args: [$1] [$2] $#"\n', 20,
                        args=["two words", "it's $HOME"])
    assert result.ok
    assert result.exit_status == 0
    assert result.stdout == f"hello from {lab.user}\nargs: [two words] [it's $HOME] 2\n"
    assert result.stderr == ""
    assert not result.timed_out and not result.truncated


def test_a_python_script_runs_under_its_shebang(lab):
    script = "#!/usr/bin/env python3\nimport sys\nprint(sys.version_info[0], sys.argv[1:])\n"
    result = run_script(lab, script, 20, args=["a b"])
    assert result.ok, result.stderr
    assert result.stdout == "3 ['a b']\n"


def test_a_failing_script_gives_its_exit_status_and_stderr(lab):
    result = run_script(lab, "echo partial\necho 'no such lab file' >&2\nexit 3\n", 20)
    assert not result.ok
    assert result.exit_status == 3
    assert result.stdout == "partial\n"
    assert result.stderr == "no such lab file\n"
    assert not result.timed_out


def test_the_copy_is_private_while_it_runs_and_removed_afterwards(lab):
    result = run_script(lab, 'echo "$0"\nstat -c "%a %U" "$0"\n', 20)
    assert result.ok, result.stderr
    path, mode = result.stdout.splitlines()
    assert re.fullmatch(r"/tmp/labdesk-script-[0-9a-f]+\.\w+", path), path
    assert mode == f"700 {lab.user}"
    assert not os.path.exists(path)


def test_a_script_past_its_timeout_is_stopped_on_the_lab(lab):
    pid_file = home(lab) / "pid"
    script = f'echo "$0"\necho $$ > {pid_file}\nsleep 60\necho never\n'
    started = time.monotonic()
    result = run_script(lab, script, 2)
    elapsed = time.monotonic() - started
    assert result.timed_out and result.exit_status is None and not result.ok
    assert 2 <= elapsed < 2 + 3, elapsed
    path = result.stdout.splitlines()[0]  # output until the time-out is kept
    assert "never" not in result.stdout
    pid = int(pid_file.read_text())
    wait_until(lambda: not alive(pid), timeout=5, what=f"the script (PID {pid}) to end")
    wait_until(lambda: not script_processes(lab.user), timeout=5, what="the script's sleep to end")
    assert not os.path.exists(path)


def test_a_script_that_ignores_sigterm_is_killed_and_its_copy_still_removed(lab):
    pid_file = home(lab) / "pid"
    script = f"trap '' TERM\necho \"$0\"\necho $$ > {pid_file}\nsleep 60\n"
    started = time.monotonic()
    result = run_script(lab, script, 1)
    elapsed = time.monotonic() - started
    assert result.timed_out and result.exit_status is None
    assert elapsed < 1 + KILL_GRACE + 3, elapsed
    pid = int(pid_file.read_text())
    wait_until(lambda: not alive(pid), timeout=5, what=f"the script (PID {pid}) to end")
    wait_until(lambda: not script_processes(lab.user), timeout=5, what="the script's sleep to end")
    assert not os.path.exists(result.stdout.splitlines()[0])


def test_ten_megabytes_on_each_stream_are_cut_to_the_limit_without_a_hang(lab):
    script = (
        "(head -c 10000000 /dev/zero | tr '\\0' e >&2) &\n"
        "head -c 10000000 /dev/zero | tr '\\0' o\n"
        "wait\n"
        "exit 4\n"
    )
    started = time.monotonic()
    result = run_script(lab, script, 60, output_limit=1000)
    assert time.monotonic() - started < 30
    assert result.truncated
    assert result.exit_status == 4 and not result.timed_out
    assert result.stdout == "o" * 1000
    assert result.stderr == "e" * 1000


def test_output_under_the_limit_is_not_truncated(lab):
    result = run_script(lab, "head -c 1000 /dev/zero | tr '\\0' x\n", 20, output_limit=1000)
    assert result.stdout == "x" * 1000 and not result.truncated


def test_output_that_is_not_utf8_is_decoded_with_replacement_characters(lab):
    result = run_script(lab, "printf 'caf\\351 ok'\n", 20)
    assert result.stdout == "caf\ufffd ok"


def test_a_background_process_holding_the_output_does_not_hold_the_result(lab):
    started = time.monotonic()
    result = run_script(lab, "sleep 30 &\necho started\n", 20)
    assert result.ok and result.stdout == "started\n"
    assert time.monotonic() - started < EXIT_LINGER + 3


def test_a_script_without_a_shebang_runs_under_sh(lab):
    result = run_script(lab, 'readlink /proc/$$/exe\n', 20)
    assert result.ok
    assert result.stdout.strip() == os.path.realpath("/bin/sh")


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_ecdsa_and_rsa_keys_work_too(sshd, kind):
    private, public = generate_key_pair(kind)
    user = sshd.add_user(public_key=public)
    try:
        result = run_script(SshTarget(sshd.host, sshd.port, user, private), "echo ok\n", 20)
        assert result.stdout == "ok\n"
    finally:
        sshd.remove_user(user)


def test_a_wrong_key_is_a_transient_authentication_error(lab):
    wrong, _ = generate_key_pair()
    target = SshTarget(lab.host, lab.port, lab.user, wrong)
    with pytest.raises(TransientError) as caught:
        run_script(target, "echo never\n", 20)
    message = str(caught.value)
    assert message == f"ssh {lab.user}@127.0.0.1:{lab.port}: authentication failed (publickey)"
    assert wrong not in message and wrong not in repr(target)
    assert "ssh" not in caught.value.user_message  # the learner's message names no address


def test_a_closed_port_is_a_transient_error_naming_the_address(lab):
    port = free_port()
    with pytest.raises(TransientError, match=rf"^ssh {lab.user}@127\.0\.0\.1:{port}: .*connection refused"):
        run_script(SshTarget("127.0.0.1", port, lab.user, lab.private_key), "echo never\n", 20)


def test_a_silent_port_is_a_transient_timeout(lab):
    """Something listens but never speaks SSH: the banner wait ends at connect_timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        target = SshTarget("127.0.0.1", port, lab.user, lab.private_key, connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(TransientError, match=rf"^ssh {lab.user}@127\.0\.0\.1:{port}: "):
            run_script(target, "echo never\n", 20)
        assert time.monotonic() - started < 5


def test_text_that_is_not_a_private_key_is_a_permanent_error():
    target = SshTarget("127.0.0.1", 1, "grader", "-----BEGIN NONSENSE-----\nxyz\n")
    with pytest.raises(PermanentError, match=r"^ssh grader@127\.0\.0\.1:1: not an Ed25519, ECDSA or RSA"):
        run_script(target, "echo never\n", 5)
