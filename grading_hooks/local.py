"""The `local` grading hook: run a check as a subprocess on the LabDesk host, for `local` connector labs.

A local lab is a desktop on this host, run by the LabDesk user in a directory of its own that is also its
HOME (connectors/local). Its checks run the same way: the script is written to a fresh 0700 file in a
fresh 0700 temporary directory, run with `check.args` in the lab's directory (`target.extra["home"]`,
also HOME) with a clean environment (PATH, HOME, LANG only: nothing of the worker's, no secrets), in a
process group of its own, and the directory is removed afterwards. Both outputs are read together as
they arrive and cut at `check.output_limit` bytes each (`truncated`).

Time-out: SIGTERM to the script's process group, SIGKILL after `KILL_GRACE` seconds. Once the script has
exited, whatever it left running in its group is killed too, so a check never outlives its run (a
process that moved to a session of its own is out of reach, as over SSH).

What this does not give: tamper-proofing. The learner's desktop runs as the same user as LabDesk, so it
could change the check while it runs; the local connector is for demos, development and tests. Labs that
are graded for real run on machines of their own, checked by the `ssh` hook as a separate grader account.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, ClassVar

from broker.grading import CheckOutcome, CheckScript, CheckTarget
from broker.remote import CappedOutput  # the same output cap as the SSH hook

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL once the time-out expired
DRAIN = 2.0  # seconds to wait for the end of the output once the script's group is gone
CHUNK = 65536
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class LocalRunner:
    """Runs checks as subprocesses of the worker; stateless, so one instance may serve many checks."""

    name: ClassVar[str] = "local"

    def run(self, target: CheckTarget, check: CheckScript) -> CheckOutcome:
        started = time.monotonic()
        home = target.extra.get("home", "")
        if not home or not Path(home).is_dir():
            return CheckOutcome(None, error=f"local check target {target.host!r}: no lab directory {home!r}")
        workdir = tempfile.mkdtemp(prefix="labdesk-check-")  # mode 0700
        try:
            path = _write_script(Path(workdir), check.script)
            try:
                process = subprocess.Popen(
                    [str(path), *check.args],
                    cwd=home,
                    env=_environment(home),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own session and process group, led by the script
                    close_fds=True,
                )
            except OSError as exc:
                return CheckOutcome(None, error=f"cannot run check {check.id}: {exc}", seconds=time.monotonic() - started)
            outcome = _supervise(process, started + check.timeout, check.output_limit)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        exit_status, stdout, stderr, timed_out, truncated = outcome
        return CheckOutcome(
            exit_status=exit_status,
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
            truncated=truncated,
            seconds=time.monotonic() - started,
        )


def _write_script(directory: Path, script: str) -> Path:
    """The script in a new 0700 file; one without a `#!` line is run by /bin/sh."""
    text = script if script.startswith("#!") else "#!/bin/sh\n" + script
    path = directory / "check"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    return path


def _environment(home: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": home,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }


def _supervise(
    process: subprocess.Popen[bytes], deadline: float, limit: int
) -> tuple[int | None, str, str, bool, bool]:
    """Read both outputs until the script exits or the deadline passes; stop it and its group."""
    assert process.stdout is not None and process.stderr is not None
    streams = _Streams({process.stdout.fileno(): CappedOutput(limit), process.stderr.fileno(): CappedOutput(limit)}, process.pid)
    pgid = process.pid  # the script leads its own group (start_new_session)
    exited = lambda: _has_exited(process.pid)  # noqa: E731
    try:
        timed_out = not streams.read_until(exited, deadline)
        if timed_out:
            _kill_group(pgid, signal.SIGTERM)
            if not streams.read_until(exited, time.monotonic() + KILL_GRACE):
                _kill_group(pgid, signal.SIGKILL)
        # The leader is a zombie now (not reaped yet, so its group id cannot be reused): end the rest.
        _kill_group(pgid, signal.SIGKILL)
        streams.stop_watching_exit()
        streams.read_until(streams.ended, time.monotonic() + DRAIN)
    finally:
        streams.close()
        process.stdout.close()
        process.stderr.close()
        returncode = process.wait()
    stdout, stderr = streams.captured.values()
    status = None if timed_out else (returncode if returncode >= 0 else 128 - returncode)
    return status, stdout.text(), stderr.text(), timed_out, bool(stdout.dropped or stderr.dropped)


class _Streams:
    """The script's two output pipes, read as data arrives; also woken by the script's exit (a pidfd)."""

    def __init__(self, captured: dict[int, CappedOutput], pid: int) -> None:
        self.captured = captured
        self.selector = selectors.DefaultSelector()
        for fd in captured:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):  # no pidfd (old kernel): the exit is noticed by polling
            self.pidfd = None

    def ended(self) -> bool:
        return not any(fd in self.captured for fd in self.selector.get_map())

    def stop_watching_exit(self) -> None:
        """The exit is known; a pidfd stays readable for ever, so stop selecting on it."""
        if self.pidfd is not None:
            self.selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def read_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Read what arrives until `done()` (True) or the deadline passes (False)."""
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            wait = min(deadline - now, 0.2 if self.pidfd is not None else 0.02)
            if not self.selector.get_map():
                time.sleep(wait)
                continue
            for key, _ in self.selector.select(wait):
                if key.fd in self.captured:
                    self._read(key.fd)
        return True

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if chunk:
            self.captured[fd].add(chunk)
        else:
            self.selector.unregister(fd)

    def close(self) -> None:
        self.stop_watching_exit()
        self.selector.close()


def _has_exited(pid: int) -> bool:
    """Whether the script has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
