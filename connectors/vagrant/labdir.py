"""One directory per lab under the backend's `state_dir`: the lab's Vagrantfile, its record, its lock.

    <state_dir>/labdesk-lab-<id>/
        Vagrantfile      the catalogue's template, rendered, plus the server block (connector.render)
        lab.json         what LabDesk decided for the lab: box, ports, users, whether credentials are set,
                         whether it is suspended, Vagrant's SSH settings once it is up
        up.json          the background `vagrant up`'s progress and outcome (connectors.vagrant.runner)
        vagrant.log      every Vagrant call's machine-readable output, appended
        .lock            flock(2): one operation on the lab at a time, across workers and processes
        .vagrant/        Vagrant's own

The directory is the lab: `list_managed` lists these, and deleting a lab removes it. Files are written
atomically (a temporary file renamed), so a reader never sees half a record. The directory is 0700: it
holds nothing secret (keys are derived, and materialized only for the length of one call), but a lab's
ports and user names are nobody else's business on a shared host.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

PREFIX = "labdesk-lab-"
DIRECTORY = re.compile(r"labdesk-lab-(\d+)\Z")


class Busy(Exception):
    """Another operation holds the lab's lock."""


@dataclass(frozen=True)
class LabDir:
    path: Path

    @classmethod
    def of(cls, state_dir: Path, lab_id: int) -> "LabDir":
        return cls(state_dir / f"{PREFIX}{lab_id}")

    @property
    def lab_id(self) -> int:
        match = DIRECTORY.match(self.path.name)
        if match is None:
            raise ValueError(f"not a lab directory: {self.path}")
        return int(match.group(1))

    @property
    def machine(self) -> str:
        """The Vagrant machine's name (and the guest's host name)."""
        return self.path.name

    @property
    def spare(self) -> Path:
        """A copy of the directory without logs, made once the machine exists (`keep_spare`): if the lab's
        directory is lost, the machine can still be destroyed from it (Vagrant needs the Vagrantfile and
        the machine's id under .vagrant/)."""
        return self.path.parent / ".spares" / self.path.name

    def keep_spare(self) -> None:
        shutil.rmtree(self.spare, ignore_errors=True)
        self.spare.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.copytree(self.path, self.spare, ignore=shutil.ignore_patterns(".lock", ".keys", "*.log", ".*.json.*"))

    def restore_from_spare(self) -> bool:
        """Bring a lost directory back from its spare copy; False when there is none."""
        if self.path.exists() or not self.spare.is_dir():
            return False
        shutil.copytree(self.spare, self.path)
        return True

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.spare, ignore_errors=True)

    def exists(self) -> bool:
        return (self.path / "lab.json").is_file()

    def read(self, name: str = "lab.json") -> dict[str, Any]:
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            return {}

    def write(self, data: dict[str, Any], name: str = "lab.json") -> None:
        scratch = self.path / f".{name}.{os.getpid()}.{threading.get_ident()}"
        scratch.write_text(json.dumps(data, indent=2, sort_keys=True))
        scratch.replace(self.path / name)

    def update(self, name: str = "lab.json", **values: Any) -> dict[str, Any]:
        data = {**self.read(name), **values}
        self.write(data, name)
        return data

    def log(self, text: str) -> None:
        with open(self.path / "vagrant.log", "a", encoding="utf-8") as log:
            log.write(text if text.endswith("\n") else text + "\n")

    @contextmanager
    def key_file(self, private_key: str | None) -> Iterator[dict[str, str]]:
        """The env that makes Vagrant log in with `private_key` (LABDESK_SSH_KEY, read by the server block),
        written to a 0600 file only for the length of one call, then with the box's own keys
        (LABDESK_BOX_KEYS: a machine that came back with the box's credentials is still reachable, and gets
        the lab's again); {} when there is no key to use yet (the box's settings apply)."""
        if private_key is None:
            yield {}
            return
        keys = self.path / ".keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        path = keys / f"{os.getpid()}-{time.monotonic_ns()}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(private_key)
        box_keys = os.pathsep.join(self.read().get("box_keys", []))
        try:
            yield {"LABDESK_SSH_KEY": str(path), "LABDESK_BOX_KEYS": box_keys}
        finally:
            path.unlink(missing_ok=True)

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the lab's lock, waiting up to `timeout` seconds for it; Busy if it stays taken."""
        with open(self.path / ".lock", "a") as handle:
            deadline = time.monotonic() + timeout
            while not _try_lock(handle.fileno()):
                if time.monotonic() >= deadline:
                    raise Busy(f"{self.path.name}: another operation is still running")
                time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def busy(self) -> bool:
        """Whether an operation holds the lock right now (without waiting)."""
        try:
            with self.locked(0):
                return False
        except Busy:
            return True
        except FileNotFoundError:
            return False


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def all_in(state_dir: Path) -> list[LabDir]:
    """Every lab directory under `state_dir`, by lab id."""
    if not state_dir.is_dir():
        return []
    found = [LabDir(path) for path in state_dir.iterdir() if DIRECTORY.match(path.name) and path.is_dir()]
    return sorted(found, key=lambda lab: lab.lab_id)
