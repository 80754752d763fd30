"""A thin wrapper over the `vagrant` command line, the only way LabDesk talks to Vagrant.

Why the CLI and not the `python-vagrant` package: Vagrant has no API but its CLI, and python-vagrant is a
CLI wrapper too, with what we must avoid: it renames Vagrant's states to its own constants, gives no time
limit to any call (a hung `up` would hold a worker forever), inherits the caller's environment (a stray
VAGRANT_HOME, VAGRANT_CWD or a learner-visible variable changes what runs) and turns `error-exit` records
into one generic CalledProcessError. This module is ~120 lines we test against recorded outputs and a real
Vagrant (docs/vagrant.md).

Every call:
* runs `vagrant <args> --machine-readable` with stdin from /dev/null (Vagrant never waits on a prompt; a
  command that would ask fails at once) in a process group of its own, killed whole when the time is up;
* gets a clean environment (`environment`): only PATH, HOME, the locale, VAGRANT_HOME and the settings that
  keep Vagrant from reaching the network by itself, plus what the backend's config adds;
* parses the records (`records.parse`) and raises `VagrantError` carrying the `error-exit` class and message
  (or the plain text of an early failure) when Vagrant exits non-zero.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from connectors.vagrant import records
from connectors.vagrant.records import Output

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NO_SERVER = "http://127.0.0.1:9"  # a box Vagrant cannot find locally is never looked up on the internet
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to a timed-out call's process group


class VagrantError(Exception):
    """Vagrant failed: `kind` is its error class ("Vagrant::Errors::BoxNotFound") or our own label."""

    def __init__(self, kind: str, message: str, command: Sequence[str] = (), exit_code: int | None = None) -> None:
        super().__init__(f"{' '.join(command)}: {kind}: {message}")
        self.kind = kind
        self.message = message
        self.command = tuple(command)
        self.exit_code = exit_code


class VagrantTimeout(VagrantError):
    """The call did not finish in its time and was killed."""


class VagrantNotInstalled(VagrantError):
    """There is no `vagrant` program to run."""


@dataclass(frozen=True)
class Result:
    output: Output
    exit_code: int
    stderr: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class VagrantCli:
    """How to run Vagrant for one backend: the program, the VAGRANT_HOME its boxes live in, extra env."""

    home: Path
    binary: str = "vagrant"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def environment(self, cwd: Path | None = None) -> dict[str, str]:
        """The whole environment of a call; nothing of the worker's own leaks in."""
        env = {
            "PATH": PATH,
            "HOME": str(self.home.parent),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "VAGRANT_HOME": str(self.home),
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
            "VAGRANT_SERVER_URL": NO_SERVER,
            "VAGRANT_IGNORE_WINRM_PLUGIN": "1",
            "VAGRANT_NO_COLOR": "1",
        }
        if cwd is not None:
            env["VAGRANT_CWD"] = str(cwd)
        return {**env, **self.extra_env}

    def installed(self) -> bool:
        return shutil.which(self.binary, path=PATH) is not None or Path(self.binary).is_file()

    def run(self, *args: str, cwd: Path | None = None, timeout: float, env: Mapping[str, str] | None = None) -> Result:
        """Run `vagrant ARGS --machine-readable` in `cwd`; VagrantError on failure, VagrantTimeout if late."""
        command = [self.binary, *args, "--machine-readable"]
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                command, cwd=cwd, env={**self.environment(cwd), **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )
        except FileNotFoundError:
            raise VagrantNotInstalled("not-installed", f"{self.binary} is not installed", command) from None
        stdout, stderr = _communicate(process, command, timeout)
        output = records.parse(stdout)
        result = Result(output, process.returncode, stderr, time.monotonic() - started)
        if process.returncode != 0:
            raise _failure(result, command)
        return result


def _communicate(process: subprocess.Popen[str], command: list[str], timeout: float) -> tuple[str, str]:
    """The call's output; on time-out its whole process group gets SIGTERM, then SIGKILL."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    except BaseException:  # the caller is being stopped (SIGTERM, KeyboardInterrupt): Vagrant stops with it
        _signal_group(process, signal.SIGTERM)
        raise
    _signal_group(process, signal.SIGTERM)
    try:
        process.communicate(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.communicate()
    raise VagrantTimeout("timeout", f"no answer within {timeout:g} s", command) from None


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _failure(result: Result, command: list[str]) -> VagrantError:
    """The error of a failed call: its `error-exit` record, else the plain text Vagrant printed."""
    found = records.error_exit(result.output)
    if found is not None:
        return VagrantError(found[0], found[1], command, result.exit_code)
    text = result.output.text or result.stderr.strip() or f"exit status {result.exit_code}"
    kind = "early-failure" if "Vagrantfile" in text else "failed"
    return VagrantError(kind, text, command, result.exit_code)
