"""The grading hooks (grading_hooks.ssh, grading_hooks.local) and the image's grader-run, for real.

SSH tests run against a real sshd on loopback (tests/support/sshd.py) with a learner and a grader laid out
like the image (tests/grading/conftest.py): the grader's key forces the repository's own grader-run, so
the `ssh` hook must go through `grader-run run-script`. The "lab" is this machine, so a test can look at
what a check left behind: its processes, its copy in the grader's private directory.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from broker.grading import CheckOutcome, CheckScript, CheckTarget, runner_for, runners
from broker.remote import KILL_GRACE, SshTarget, run_script
from grading_hooks.local import LocalRunner
from grading_hooks.ssh import REMOTE_SLACK, SshRunner
from tests.grading.conftest import GRADER_RUN, Lab
from tests.support.http import free_port
from tests.support.sshd import Sshd, generate_key_pair, user_pids
from tests.support.waiting import wait_until

FLOOD = 10_000_000  # bytes a flooding check writes to stdout


def answer_check(learner: str, marker: str) -> str:
    """A check of the learner's work: ~/answer.txt must say 42. Only this text carries `marker`."""
    return f"""#!/bin/sh
if grep -qx 42 /home/{learner}/answer.txt 2>/dev/null; then
  echo "task 1 passed {marker}"
  exit 0
fi
echo "{marker}"
echo "task 1: answer.txt should say 42" >&2
exit 1
"""


def write_answer(lab: Lab, text: str) -> None:
    """The learner's work, as the learner would leave it (their file, readable by their group)."""
    path = lab.learner_home / "answer.txt"
    path.write_text(text)
    os.chown(path, lab.learner_home.stat().st_uid, lab.learner_home.stat().st_gid)
    path.chmod(0o640)


def copies(lab: Lab) -> list[Path]:
    """The check copies in the grader's private directory."""
    directory = lab.grader_home / ".cache/labdesk-checks"
    return sorted(directory.iterdir()) if directory.exists() else []


# -- the ssh hook against a real sshd ------------------------------------------------------------------
@pytest.mark.slow
def test_a_passing_check_runs_as_the_grader_and_its_copy_is_removed(lab: Lab) -> None:
    marker = secrets.token_hex(8)
    write_answer(lab, "42\n")
    check = CheckScript("task-1", answer_check(lab.learner, marker), timeout=20)

    outcome = SshRunner().run(lab.target(), check)

    assert outcome.passed, outcome
    assert outcome.exit_status == 0 and outcome.stdout == f"task 1 passed {marker}\n" and outcome.stderr == ""
    assert not outcome.timed_out and not outcome.truncated and not outcome.error
    assert 0 < outcome.seconds < 20
    directory = lab.grader_home / ".cache/labdesk-checks"
    assert directory.stat().st_mode & 0o777 == 0o700 and directory.stat().st_uid == lab.grader_home.stat().st_uid
    assert copies(lab) == []


@pytest.mark.slow
def test_a_failing_check_reports_its_status_and_stderr(lab: Lab) -> None:
    write_answer(lab, "41\n")
    outcome = SshRunner().run(lab.target(), CheckScript("task-1", answer_check(lab.learner, "m"), timeout=20))
    assert outcome.exit_status == 1 and not outcome.passed
    assert outcome.stderr == "task 1: answer.txt should say 42\n" and outcome.stdout == "m\n"
    assert not outcome.error and not outcome.timed_out


@pytest.mark.slow
def test_arguments_reach_the_script_and_a_python_shebang_is_honoured(lab: Lab) -> None:
    script = "#!/usr/bin/python3\nimport os, sys\nprint(sys.argv[1:], os.getcwd())\n"
    outcome = SshRunner().run(lab.target(), CheckScript("py", script, args=("--port=8080", "a.b"), timeout=20))
    assert outcome.passed, outcome
    assert outcome.stdout == f"['--port=8080', 'a.b'] {lab.grader_home}\n"


@pytest.mark.slow
def test_grader_run_refuses_unsafe_arguments_over_ssh(lab: Lab) -> None:
    outcome = SshRunner().run(lab.target(), CheckScript("bad", "echo ran\n", args=("$(id)",), timeout=20))
    assert outcome.exit_status == 126 and not outcome.passed
    assert "grader-run: refused argument: '$(id)'" in outcome.stderr and "ran" not in outcome.stdout


@pytest.mark.slow
def test_a_check_that_hangs_times_out_and_its_processes_are_ended(lab: Lab) -> None:
    """sshd will not signal a forced command for LabDesk: grader-run stops the check at its limit."""
    script = "#!/bin/sh\necho started $$\nsleep 60 &\nsleep 60\n"
    outcome = SshRunner().run(lab.target(), CheckScript("hang", script, timeout=2))

    assert outcome.timed_out and outcome.exit_status is None and not outcome.passed and not outcome.error
    assert outcome.stdout.startswith("started ")
    assert 2 <= outcome.seconds < 2 + 2
    wait_until(lambda: not user_pids(lab.grader), timeout=5, what="the grader's processes to end")
    assert copies(lab) == []


@pytest.mark.slow
def test_a_check_that_ignores_sigterm_is_killed(lab: Lab) -> None:
    script = "#!/bin/sh\ntrap '' TERM\necho started\nsleep 60\n"
    outcome = SshRunner().run(lab.target(), CheckScript("stubborn", script, timeout=2))
    assert outcome.timed_out and outcome.exit_status is None and not outcome.passed
    assert 2 + 2 <= outcome.seconds < 2 + REMOTE_SLACK  # grader-run's SIGKILL, 2 s after its SIGTERM
    wait_until(lambda: not user_pids(lab.grader), timeout=5, what="SIGKILL to end the check")
    assert copies(lab) == []


@pytest.mark.slow
def test_a_check_exiting_124_in_time_did_not_time_out(lab: Lab) -> None:
    outcome = SshRunner().run(lab.target(), CheckScript("own-124", "exit 124\n", timeout=10))
    assert outcome.exit_status == 124 and not outcome.timed_out and not outcome.passed


@pytest.mark.slow
def test_without_grader_run_the_ssh_signal_stops_a_hanging_check(lab: Lab) -> None:
    private, public = generate_key_pair()
    user = lab.sshd.add_user(public_key=public)
    try:
        target = lab.target(user=user, private_key=private, extra={})
        outcome = SshRunner().run(target, CheckScript("hang", "#!/bin/sh\nsleep 60\n", timeout=2))
        assert outcome.timed_out and outcome.exit_status is None and outcome.seconds < 2 + KILL_GRACE + 2
        wait_until(lambda: not user_pids(user), timeout=10, what="the check's processes to end")
    finally:
        lab.sshd.remove_user(user)


@pytest.mark.slow
def test_a_check_flooding_its_output_is_cut_at_the_limit(lab: Lab) -> None:
    script = f"#!/bin/sh\nhead -c {FLOOD} /dev/zero | tr '\\0' x\necho done >&2\n"
    outcome = SshRunner().run(lab.target(), CheckScript("flood", script, timeout=60, output_limit=16384))
    assert outcome.passed and outcome.truncated
    assert outcome.stdout == "x" * 16384 and outcome.stderr == "done\n"
    assert outcome.seconds < 30


@pytest.mark.slow
def test_a_check_the_learner_overwrote_still_runs_the_graders_copy(lab: Lab) -> None:
    """The learner plants fakes everywhere they can write and keeps overwriting; the broker's copy runs.

    The fake passes and prints FAKE; the real check fails (the learner did not do the work) and prints a
    marker only the broker's text holds. Named checks in a directory the learner can write are faked
    (that is why the broker sends the script), the script on stdin is not.
    """
    marker = secrets.token_hex(8)
    real = answer_check(lab.learner, marker)
    (lab.checks / "task1").write_text(real)
    (lab.checks / "task1").chmod(0o777)
    fake = "#!/bin/sh\necho FAKE task 1 passed\nexit 0\n"
    grader_dir = lab.grader_home / ".cache/labdesk-checks"
    attack = f"""#!/bin/sh
cat >/tmp/fake-{lab.learner}.sh <<'EOF'
{fake}EOF
chmod 755 /tmp/fake-{lab.learner}.sh
cp /tmp/fake-{lab.learner}.sh /tmp/check.sh
cp /tmp/fake-{lab.learner}.sh {lab.checks}/task1
mkdir -p {grader_dir} 2>/dev/null && echo WROTE-GRADER-DIR
touch {grader_dir}/check.x 2>/dev/null && echo WROTE-GRADER-COPY
setsid sh -c 'while :; do
  for f in /tmp/labdesk-script-* /tmp/check.* {grader_dir}/check.*; do
    [ -f "$f" ] && cp /tmp/fake-{lab.learner}.sh "$f" 2>/dev/null
  done
done' </dev/null >/dev/null 2>&1 &
echo planted
"""
    planted = run_script(lab.as_learner(), attack, 20)
    assert planted.ok and planted.stdout == "planted\n", planted
    assert user_pids(lab.learner), "the learner's overwriting loop is running"

    # The named check is the learner's now: it passes, without the work.
    named = run_script(
        SshTarget(lab.sshd.host, lab.sshd.port, lab.grader, lab.grader_key), "", 20, remote_command="task1"
    )
    assert named.exit_status == 0 and named.stdout.startswith("FAKE")

    for _ in range(5):
        outcome = SshRunner().run(lab.target(), CheckScript("task-1", real, timeout=20))
        assert outcome.exit_status == 1 and not outcome.passed, outcome
        assert outcome.stdout == f"{marker}\n" and "FAKE" not in outcome.stdout
    write_answer(lab, "42\n")
    outcome = SshRunner().run(lab.target(), CheckScript("task-1", real, timeout=20))
    assert outcome.passed and outcome.stdout == f"task 1 passed {marker}\n"
    assert copies(lab) == []


@pytest.mark.slow
def test_an_account_without_a_forced_command_uses_the_shell_wrapper(lab: Lab) -> None:
    private, public = generate_key_pair()
    user = lab.sshd.add_user(public_key=public)
    try:
        target = lab.target(user=user, private_key=private, extra={})
        outcome = SshRunner().run(target, CheckScript("id", "#!/bin/sh\nid -un\n", timeout=20))
        assert outcome.passed and outcome.stdout == f"{user}\n"
    finally:
        lab.sshd.remove_user(user)


@pytest.mark.slow
def test_a_refused_connection_is_an_error_outcome_naming_the_address() -> None:
    port = free_port()
    target = CheckTarget("main", "ssh", address="127.0.0.1", port=port, user="grader", private_key=generate_key_pair()[0])
    outcome = SshRunner().run(target, CheckScript("c", "true\n", timeout=5))
    assert outcome.exit_status is None and not outcome.passed
    assert f"grader@127.0.0.1:{port}" in outcome.error and "connection refused" in outcome.error
    assert "PRIVATE KEY" not in outcome.error


@pytest.mark.slow
def test_a_rejected_key_is_an_error_outcome(lab: Lab) -> None:
    outcome = SshRunner().run(lab.target(private_key=generate_key_pair()[0]), CheckScript("c", "true\n", timeout=10))
    assert not outcome.passed and "authentication failed" in outcome.error


def test_a_target_without_key_or_address_is_an_error_outcome() -> None:
    check = CheckScript("c", "true\n", timeout=5)
    assert "private key" in SshRunner().run(CheckTarget("main", "ssh", address="10.0.0.1"), check).error
    assert "address" in SshRunner().run(CheckTarget("main", "ssh", private_key="x"), check).error
    assert "not an Ed25519" in SshRunner().run(CheckTarget("main", "ssh", address="127.0.0.1", private_key="x"), check).error


# -- the local hook -------------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "lab"
    path.mkdir()
    return path


def local(home: Path, script: str, *args: str, timeout: float = 10, limit: int = 16384) -> CheckOutcome:
    target = CheckTarget("main", "local", extra={"home": str(home)})
    return LocalRunner().run(target, CheckScript("c", script, args=args, timeout=timeout, output_limit=limit))


def test_the_runners_are_found_by_entry_point() -> None:
    assert {"ssh": SshRunner, "local": LocalRunner}.items() <= runners().items()
    assert isinstance(runner_for(CheckTarget("main", "local")), LocalRunner)


def test_local_passing_and_failing_checks(home: Path) -> None:
    (home / "answer.txt").write_text("42\n")
    passing = local(home, "grep -qx 42 answer.txt && echo ok")
    assert passing.passed and passing.stdout == "ok\n" and passing.exit_status == 0
    failing = local(home, "#!/bin/sh\necho 'answer.txt should say 43' >&2\nexit 3\n")
    assert failing.exit_status == 3 and not failing.passed and failing.stderr == "answer.txt should say 43\n"
    assert 0 < failing.seconds < 5


def test_local_check_runs_in_the_labs_home_with_a_clean_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABDESK_SECRET_KEY", "do-not-leak")
    outcome = local(home, "#!/bin/sh\necho \"$HOME|$(pwd)|$1|$2\"\nenv | cut -d= -f1 | sort | tr '\\n' ' '\n", "a b", "--x")
    assert outcome.passed
    first, second = outcome.stdout.splitlines()
    assert first == f"{home}|{home}|a b|--x"
    assert set(second.split()) <= {"HOME", "LANG", "PATH", "PWD", "SHLVL", "_"} and "LABDESK_SECRET_KEY" not in second


def test_local_check_copy_is_private_and_removed(home: Path) -> None:
    outcome = local(home, "#!/bin/sh\necho \"$0\"\nstat -c %a \"$0\" \"$(dirname \"$0\")\"\n")
    path, modes = outcome.stdout.splitlines()[0], outcome.stdout.splitlines()[1:]
    assert modes == ["700", "700"]
    assert not Path(path).exists() and not Path(path).parent.exists()


def test_local_python_check_with_its_shebang(home: Path) -> None:
    outcome = local(home, "#!/usr/bin/env python3\nimport sys\nprint(sys.argv[1:])\n", "1")
    assert outcome.passed and outcome.stdout == "['1']\n"


def test_local_check_that_hangs_is_killed_with_its_process_group(home: Path) -> None:
    script = "#!/bin/sh\nsleep 60 &\necho $$ $!\nsleep 60\n"
    outcome = local(home, script, timeout=1)
    assert outcome.timed_out and outcome.exit_status is None and not outcome.passed
    assert 1 <= outcome.seconds < 1 + 2
    for pid in map(int, outcome.stdout.split()):
        assert not _alive(pid), f"process {pid} of the check survived"


@pytest.mark.slow
def test_local_check_that_ignores_sigterm_is_killed(home: Path) -> None:
    outcome = local(home, "#!/bin/sh\ntrap '' TERM\necho $$\nsleep 60\n", timeout=1)
    assert outcome.timed_out and not _alive(int(outcome.stdout))
    assert outcome.seconds < 1 + 2 + 2


def test_local_check_leaves_nothing_running_after_it_exits(home: Path) -> None:
    started = time.monotonic()
    outcome = local(home, "#!/bin/sh\nsleep 60 &\necho $!\n")
    assert outcome.passed and time.monotonic() - started < 2
    assert not _alive(int(outcome.stdout))


def test_local_check_flooding_its_output_is_cut_at_the_limit(home: Path) -> None:
    outcome = local(home, f"head -c {FLOOD} /dev/zero | tr '\\0' x\nhead -c {FLOOD} /dev/zero | tr '\\0' y >&2\n", timeout=30)
    assert outcome.passed and outcome.truncated
    assert outcome.stdout == "x" * 16384 and outcome.stderr == "y" * 16384
    assert outcome.seconds < 10


def test_local_target_without_its_home_is_an_error_outcome(tmp_path: Path) -> None:
    outcome = local(tmp_path / "gone", "true\n")
    assert not outcome.passed and "no lab directory" in outcome.error


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# -- grader-run on its own (no SSH) ---------------------------------------------------------------------
def grader_run(tmp_path: Path, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    checks = tmp_path / "checks"
    checks.mkdir(exist_ok=True)
    (checks / "exercise1").write_text('#!/bin/sh\necho "ran exercise1 $*"\n')
    (checks / "exercise1").chmod(0o755)
    (tmp_path / "home").mkdir(exist_ok=True)
    env = dict(os.environ, LABDESK_CHECKS_DIR=str(checks), SSH_ORIGINAL_COMMAND=command, HOME=str(tmp_path / "home"))
    return subprocess.run([str(GRADER_RUN)], input=stdin, env=env, capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize(
    ("command", "status", "expected"),
    [
        ("exercise1 --name=alice", 0, "ran exercise1 --name=alice"),
        ("../bin/sh", 126, "no such check: ../bin/sh"),
        ("missing", 126, "no such check: missing"),
        ("exercise1; id", 126, "refused argument: exercise1;"),
        ("", 126, "usage: run-script"),
    ],
)
def test_grader_run_named_checks_still_work(tmp_path: Path, command: str, status: int, expected: str) -> None:
    result = grader_run(tmp_path, command)
    assert result.returncode == status and expected in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("run-script $(id)", "refused argument: $(id)"),
        ("run-script a;b", "refused argument: a;b"),
        ("run-script `id`", "refused argument: `id`"),
        ("run-script a|b", "refused argument: a|b"),
    ],
)
def test_grader_run_script_refuses_unsafe_arguments(tmp_path: Path, command: str, expected: str) -> None:
    result = grader_run(tmp_path, command, stdin="#!/bin/sh\necho ran\n")
    assert result.returncode == 126 and expected in result.stderr and "ran" not in result.stdout


def test_grader_run_script_runs_stdin_privately_and_removes_it(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "$* $(stat -c %a "$0" "$(dirname "$0")" | tr "\\n" " ")"\nexit 4\n'
    result = grader_run(tmp_path, "run-script a=1 b", stdin=script)
    assert result.returncode == 4 and result.stdout == "a=1 b 700 700 \n"
    assert list((tmp_path / "home/.cache/labdesk-checks").iterdir()) == []


def test_grader_run_script_refuses_an_empty_script(tmp_path: Path) -> None:
    result = grader_run(tmp_path, "run-script")
    assert result.returncode == 126 and "no script on stdin" in result.stderr


def test_grader_run_script_refuses_a_directory_that_is_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "home/.cache").mkdir(parents=True)
    (tmp_path / "home/.cache/labdesk-checks").symlink_to(elsewhere)
    result = grader_run(tmp_path, "run-script", stdin="#!/bin/sh\necho ran\n")
    assert result.returncode == 126 and "not the grader's own directory" in result.stderr and result.stdout == ""


def test_grader_run_script_removes_copies_left_a_day_ago(tmp_path: Path) -> None:
    directory = tmp_path / "home/.cache/labdesk-checks"
    directory.mkdir(parents=True)
    old, recent = directory / "check.old", directory / "check.recent"
    old.write_text("x")
    recent.write_text("x")
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert grader_run(tmp_path, "run-script", stdin="true\n").returncode == 0
    assert sorted(directory.iterdir()) == [recent]

