"""X display numbers: which are taken on this host, which one a new lab gets, and cleaning up after one.

An X server on display N holds /tmp/.X<N>-lock and the socket /tmp/.X11-unix/X<N> (on Linux also the
abstract socket @/tmp/.X11-unix/X<N>, visible in /proc/net/unix even from another /tmp namespace).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Container, Iterable

from connectors.local.processes import parse_stat

TMP = Path("/tmp")
NET_UNIX = Path("/proc/net/unix")
FIRST = 100
LAST = 9999

_FILE = re.compile(r"^\.?X(\d+)(?:-lock)?$")
_SOCKET = re.compile(r"\.X11-unix/X(\d+)$")


def numbers(file_names: Iterable[str], socket_paths: Iterable[str] = ()) -> set[int]:
    """Display numbers named by lock/socket file names ("X7", ".X7-lock") and unix socket paths."""
    found = {int(m.group(1)) for m in map(_FILE.match, file_names) if m}
    return found | {int(m.group(1)) for m in map(_SOCKET.search, socket_paths) if m}


def first_free(taken: Container[int], first: int = FIRST, last: int = LAST) -> int:
    """The lowest display number from `first` that is not taken; high numbers keep clear of real seats."""
    for number in range(first, last + 1):
        if number not in taken:
            return number
    raise OSError(f"no free X display between :{first} and :{last}")


def in_use(tmp: Path = TMP, net_unix: Path = NET_UNIX) -> set[int]:
    """The displays some X server on this host holds, or held without cleaning up."""
    names = [p.name for p in tmp.glob(".X*-lock")]
    sockets = tmp / ".X11-unix"
    if sockets.is_dir():
        names += [p.name for p in sockets.iterdir()]
    try:
        lines = net_unix.read_text().splitlines()
    except OSError:
        lines = []
    return numbers(names, (line.rsplit(" ", 1)[-1] for line in lines))


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a killed server may linger as a zombie until init reaps it."""
    try:
        return parse_stat(Path("/proc", str(pid), "stat").read_text()).alive
    except (OSError, ValueError, IndexError):
        return False


def clear_stale(number: int, tmp: Path = TMP) -> None:
    """Remove the lock and socket of display `number` if the server that held them is dead (SIGKILLed)."""
    lock = tmp / f".X{number}-lock"
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return
    if not _alive(pid):
        lock.unlink(missing_ok=True)
        (tmp / ".X11-unix" / f"X{number}").unlink(missing_ok=True)
