"""The `ssh` grading hook: run a check on a lab machine over SSH, as the image's grader account.

The connector's `CheckTarget` gives the address, port, account (`grader`, not the learner) and the lab's
private key. broker.remote does the work: the script goes on the command's stdin, is copied to a private
file, run within the check's timeout (SIGTERM, then SIGKILL, to its process group), and removed; each
output is cut at `check.output_limit`.

When the target's `extra["command"]` is "grader-run", the account's sshd forces the image's `grader-run`
(docs/images.md), which refuses anything but its own modes: the script is then sent to
`grader-run run-script --timeout=SECONDS ARGS`, which keeps the copy in the grader's own 0700 directory.
sshd does not let LabDesk signal a forced command, so grader-run enforces the time limit itself (SIGTERM
to the check's process group, SIGKILL 2 s later, exit status 124 or 137). The whole call may then take
`REMOTE_SLACK` seconds more than the check's timeout, so the status and output of a check grader-run
stopped still arrive; an exit of 124 or 137 at or after the time limit is reported as `timed_out`.
Otherwise the portable copy-run-remove shell wrapper of broker.remote is used (any POSIX account).

Not reaching the machine (refused, timed out, key rejected, no key) is not raised: it comes back as
`CheckOutcome(exit_status=None, error=<message naming user@host:port>)`, which never passes.
"""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar

from broker.errors import PermanentError, TransientError
from broker.grading import CheckOutcome, CheckScript, CheckTarget
from broker.remote import SshTarget, run_script

log = logging.getLogger(__name__)
GRADER_RUN = "grader-run"
RUN_SCRIPT = "run-script"  # grader-run's mode that takes the script on stdin
REMOTE_SLACK = 5.0  # seconds: grader-run's SIGKILL 2 s after its SIGTERM, plus connecting
TIMED_OUT_STATUSES = (124, 137)  # coreutils timeout: the limit passed (137: SIGKILL was needed)


class SshRunner:
    """Runs checks over SSH with broker.remote; stateless, so one instance may serve many checks."""

    name: ClassVar[str] = "ssh"

    def run(self, target: CheckTarget, check: CheckScript) -> CheckOutcome:
        started = time.monotonic()
        if not target.address or not target.private_key:
            missing = "address" if not target.address else "private key"
            return CheckOutcome(None, error=f"ssh check target {target.host!r} has no {missing}")
        if check.timeout <= 0:
            return CheckOutcome(None, error=f"check {check.id}: the timeout must be positive, not {check.timeout}")
        ssh = SshTarget(target.address, target.port, target.user, target.private_key)
        forced = target.extra.get("command") == GRADER_RUN
        remote_command = f"{RUN_SCRIPT} --timeout={_seconds(check.timeout)}" if forced else None
        try:
            result = run_script(
                ssh,
                check.script,
                check.timeout + REMOTE_SLACK if forced else check.timeout,
                args=check.args,
                output_limit=check.output_limit,
                remote_command=remote_command,
            )
        except (TransientError, PermanentError) as exc:
            log.warning("check %s on %s could not run: %s", check.id, target.host, exc)
            return CheckOutcome(None, error=str(exc), seconds=time.monotonic() - started)
        seconds = time.monotonic() - started
        timed_out = result.timed_out or (
            forced and result.exit_status in TIMED_OUT_STATUSES and seconds >= check.timeout
        )
        return CheckOutcome(
            exit_status=None if timed_out else result.exit_status,
            stdout=result.stdout,
            stderr=result.stderr,
            timed_out=timed_out,
            truncated=result.truncated,
            seconds=seconds,
        )


def _seconds(timeout: float) -> str:
    """A duration grader-run accepts: digits, at most one decimal point ("30", "2.5")."""
    return f"{math.ceil(timeout * 1000) / 1000:.3f}".rstrip("0").rstrip(".")
