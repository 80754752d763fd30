"""Process groups seen through /proc, so their state never depends on who their parent is.

A lab's processes are started by an rq worker that may exit right after provisioning, so no caller can
`waitpid` them. A group lives while one member is neither a zombie nor dead; it is stopped when every
live member is in state T. Every member carries a marker in its environment, which tells our group from
a stranger that later got the same process-group id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

PROC = Path("/proc")

# Start `"$@"` in the background and print its pid; the shell itself exits at once, so the program is
# adopted by init (a double fork) and never lingers as a zombie of the caller.
_LAUNCH = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the connector needs."""

    pid: int
    state: str
    pgid: int

    @property
    def alive(self) -> bool:
        """Zombies (Z) and dead tasks (X, x) no longer run and never will."""
        return self.state not in ("Z", "X", "x")

    @property
    def stopped(self) -> bool:
        """Stopped by a signal such as SIGSTOP (T); tracing stops (t) are someone else's business."""
        return self.state == "T"


def parse_stat(text: str) -> ProcStat:
    """Parse a stat line; the command name may hold spaces and parentheses, so split at the last ')'."""
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return ProcStat(pid=int(head.split("(", 1)[0]), state=fields[0], pgid=int(fields[2]))


def scan(proc: Path = PROC) -> list[ProcStat]:
    """Every process visible now; ones that exit during the scan are skipped."""
    found = []
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            try:
                found.append(parse_stat(Path(entry.path, "stat").read_text()))
            except (OSError, ValueError, IndexError):
                continue
    return found


def live_members(pgid: int, stats: Iterable[ProcStat]) -> list[ProcStat]:
    """The members of group `pgid` that still run or are stopped."""
    return [s for s in stats if s.pgid == pgid and s.alive]


def carries(pid: int, marker: str, proc: Path = PROC) -> bool:
    """Whether the process's environment holds `marker` ("NAME=value"), i.e. whether we started it."""
    try:
        environ = Path(proc, str(pid), "environ").read_bytes()
    except OSError:
        return False
    return marker.encode() in environ.split(b"\0")


def group(pgid: int, marker: str, proc: Path = PROC) -> list[ProcStat]:
    """The live members of our group `pgid`, or [] when it is gone or its id now names strangers."""
    if pgid <= 1:
        return []
    members = live_members(pgid, scan(proc))
    return members if any(carries(m.pid, marker, proc) for m in members) else []


def start_detached(argv: Sequence[str], env: Mapping[str, str], log: Path) -> tuple[int, int]:
    """Start `argv` in a new session as a grandchild; returns (process group id, pid of `argv`)."""
    launcher = subprocess.Popen(
        ["sh", "-c", _LAUNCH, "sh", str(log), *argv],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    out, _ = launcher.communicate(timeout=10)
    return launcher.pid, int(out.strip())


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the whole group; False when the group no longer exists. Never signals group 0 or 1."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pgid: int, timeout: float, proc: Path = PROC) -> bool:
    """Poll /proc until no member of `pgid` is alive; False if some still are after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while live_members(pgid, scan(proc)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def end_group(pgid: int, marker: str, grace: float = 3.0, proc: Path = PROC) -> None:
    """Terminate our group politely, then kill it; SIGCONT after SIGTERM lets stopped members die."""
    if not group(pgid, marker, proc):
        return
    signal_group(pgid, signal.SIGTERM)
    signal_group(pgid, signal.SIGCONT)
    if not wait_gone(pgid, grace, proc):
        signal_group(pgid, signal.SIGKILL)
        wait_gone(pgid, 1.0, proc)
