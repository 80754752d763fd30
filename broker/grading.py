"""The grading hook protocol: what a check is, what running one returns, and how runners are found.

A runner (a "grading hook") runs one check script on one machine of a learner's lab and reports what
happened. Runners are plugins under the `labdesk.grading_hooks` entry point group (`ssh`, `local`,
`guest_agent`, ...), so a site can add one without touching the broker; they import only this module
(and `broker.remote` for SSH). The broker decides what to run and scores the outcomes (broker.attempts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import ClassVar, Protocol

from broker.connector import CheckTarget
from broker.errors import ConfigError

GROUP = "labdesk.grading_hooks"
OUTPUT_LIMIT = 16 * 1024  # bytes kept of each of stdout and stderr
__all__ = ["CheckTarget", "CheckScript", "CheckOutcome", "Runner", "runner_for", "GROUP", "OUTPUT_LIMIT"]


@dataclass(frozen=True)
class CheckScript:
    """One check as a runner receives it: the script text (a shebang, or /bin/sh), arguments, a timeout."""

    id: str
    script: str
    args: tuple[str, ...] = ()
    timeout: float = 30.0
    output_limit: int = OUTPUT_LIMIT


@dataclass(frozen=True)
class CheckOutcome:
    """What running a check did. `error` is set when it could not run at all (unreachable, refused)."""

    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    truncated: bool = False
    seconds: float = 0.0
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_status == 0 and not self.timed_out and not self.error


class Runner(Protocol):
    """A grading hook. Instances are made with no arguments and may be reused across checks."""

    name: ClassVar[str]

    def run(self, target: CheckTarget, check: CheckScript) -> CheckOutcome:
        """Copy the script to the target, run it within `check.timeout`, remove it; never raise for a
        failing or hanging script (that is an outcome), only report `error` when it could not run."""


@cache
def runners() -> dict[str, type[Runner]]:
    """Every installed runner class, by entry-point name."""
    return {ep.name: ep.load() for ep in entry_points(group=GROUP)}


def runner_for(target: CheckTarget) -> Runner:
    """A runner for the target's kind, or ConfigError naming the installed ones."""
    found = runners()
    if target.runner not in found:
        raise ConfigError(f"no grading hook '{target.runner}' is installed (installed: {', '.join(sorted(found)) or 'none'})")
    return found[target.runner]()
