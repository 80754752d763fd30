"""Where a lab lives on disk, `<state_dir>/labdesk-lab-<id>/lab.json`, and the lock serialising allocation.

lab.json is the lab's record (display, port, process group); it holds no secret, only the path of the
0600 password file. Several rq workers share one state_dir, so finding or creating a lab, choosing its
display and port, and deleting it all happen under an exclusive lock on `<state_dir>/.lock`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

RECORD = "lab.json"
PREFIX = "labdesk-lab-"


@dataclass(frozen=True)
class LabRecord:
    """What is running for one lab, so any worker process can observe, suspend or delete it."""

    lab_id: int
    display: int
    port: int
    pgid: int
    pid: int
    password_file: str


def read_record(lab_dir: Path) -> LabRecord | None:
    """The lab's record, or None when the lab does not exist (or was never fully created)."""
    try:
        return LabRecord(**json.loads((lab_dir / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_record(lab_dir: Path, record: LabRecord) -> None:
    """Write lab.json atomically, so a concurrent reader sees the old record or the new one, never half."""
    tmp = lab_dir / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(record)))
    tmp.replace(lab_dir / RECORD)


def records(state_dir: Path) -> Iterator[tuple[Path, LabRecord]]:
    """Every lab with a record under `state_dir`, with its directory."""
    if not state_dir.is_dir():
        return
    for lab_dir in sorted(state_dir.glob(f"{PREFIX}*")):
        record = read_record(lab_dir)
        if record is not None:
            yield lab_dir, record


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's exclusive lock (across processes) for the duration of the block."""
    fd = os.open(state_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
