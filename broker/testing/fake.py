"""A scriptable fake backend for the broker's own tests, benchmarks and the cost simulation.

Its objects live in a directory of JSON files (`state_dir`), so rq workers in other processes see the
same backend, or in memory when no directory is given. Settings script its behaviour:

- `provision_delay`, `suspend_delay`, `resume_delay` (s): how long an object stays PENDING / in transit;
- `call_latency` (s): how long every call blocks, like a slow cloud API;
- `fail` (`{"provision": "transient"}` …) and `fail_times` (how many calls fail before one succeeds,
  default for ever): which calls raise which error kind;
- `capacity`: how many objects it holds before raising `CapacityError`;
- `down`: `available()` answers False;
- `endpoints`: the desktop endpoints of every lab, as dicts of `DesktopEndpoint` fields;
- `gpus`: GPU units it offers (dicts of `GpuUnit` fields); each object records the unit it was given,
  so tests can prove that no unit ever served two labs at once (the fake, like libvirt's test driver,
  would not stop it); `gpu_on_suspend = "release"` lets a suspended lab's unit go;
- `check_targets`: where grading checks run, as dicts of `CheckTarget` fields; without it, one `local`
  target whose home is `check_home`, else `state_dir`, else a private directory in the temp dir, so
  broker tests run checks for real through the `local` grading hook.

With a `state_dir`, every provision, suspend, resume and delete also appends one line to its `calls.log`:
`<operation> <lab id> <pid> <rq job id or ->`. Appends of one short line are atomic, so processes share
the log, and a scale-out test can prove each transition reached the backend exactly once
(tests/test_scale_out.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from rq import get_current_job

from broker.connector import (
    Capability,
    CheckTarget,
    Connector,
    DesktopEndpoint,
    GpuUnit,
    Handle,
    LabSpec,
    ManagedObject,
    Observation,
    ObservedState,
)
from broker.errors import CapacityError, PermanentError, TransientError, Unsupported

ERRORS = {
    "transient": TransientError,
    "capacity": CapacityError,
    "permanent": PermanentError,
    "unsupported": Unsupported,
}

_MEMORY: dict[str, dict[str, dict[str, Any]]] = {}
CALL_LOG = "calls.log"


class FakeConnector(Connector):
    """A backend whose objects are records that change state as a (possibly simulated) clock advances."""

    capabilities = frozenset({Capability.SUSPEND})

    def __init__(self, name: str, config: Mapping[str, Any], clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config)
        self.clock = clock
        state_dir = self.config.get("state_dir")
        self._dir = Path(state_dir) if state_dir else None
        if self._dir:
            self._dir.mkdir(parents=True, exist_ok=True)
        if self.config.get("gpus"):
            self.capabilities = frozenset({Capability.SUSPEND, Capability.GPU})

    # -- the connector interface -------------------------------------------------------------------
    def provision(self, spec: LabSpec) -> Handle:
        self._call("provision")
        self._log("provision", spec.lab_id)
        key = spec.name
        if self._load(key) is None:
            if len(self._keys()) >= int(self.config.get("capacity", 1_000_000_000)):
                raise CapacityError(f"{self.name} is full", "All lab machines are busy; try again shortly.")
            gpu = spec.gpu.key if spec.gpu else None
            self._save(key, {"lab_id": spec.lab_id, "state": "pending", "until": self._after("provision"), "gpu": gpu})
        return {"key": key}

    def observe(self, handle: Handle) -> Observation:
        self._call("observe")
        record = self._load(handle["key"])
        if record is None:
            return Observation(ObservedState.GONE, 0, "deleted")
        return self._settle(handle["key"], record)

    def suspend(self, handle: Handle) -> None:
        self._transit(handle, "suspend", "suspending")
        record = self._load(handle["key"])
        if record is not None and not self.keeps_gpu_when_suspended(handle):
            record["gpu"] = None  # saved to disk: the unit is no longer in use
            self._save(handle["key"], record)

    def resume(self, handle: Handle) -> None:
        self._transit(handle, "resume", "resuming")

    def after_resume(self, handle: Handle) -> None:
        """Counts the calls in the record, so tests see that the broker made exactly one per resume."""
        record = self._load(handle["key"])
        if record is not None:
            record["after_resume"] = record.get("after_resume", 0) + 1
            self._save(handle["key"], record)

    def delete(self, handle: Handle) -> None:
        self._call("delete")
        self._log("delete", _lab_of(handle))
        self._remove(handle["key"])

    def endpoints(self, handle: Handle) -> list[DesktopEndpoint]:
        """`endpoints` from the settings (dicts of DesktopEndpoint fields), else one VNC desktop."""
        self._call("endpoints")
        configured = self.config.get("endpoints") or [{"protocol": "vnc", "host": "127.0.0.1", "port": 5900, "password": "fake-secret"}]
        return [DesktopEndpoint(**item) for item in configured]

    def check_targets(self, handle: Handle) -> list[CheckTarget]:
        """`check_targets` from the settings (dicts of CheckTarget fields), else one `local` target."""
        self._call("check_targets")
        if self._load(handle["key"]) is None:
            raise PermanentError(f"{handle['key']} is gone", "This lab no longer exists on its backend.")
        configured = self.config.get("check_targets")
        if configured:
            return [CheckTarget(**item) for item in configured]
        home = self.config.get("check_home") or self.config.get("state_dir")
        if not home:
            home = Path(tempfile.gettempdir(), f"labdesk-fake-{os.getuid()}-{self.name}")
            home.mkdir(mode=0o700, exist_ok=True)
            if home.is_symlink() or home.stat().st_uid != os.getuid():
                raise PermanentError(f"{home} is not ours", "This lab cannot be checked automatically.")
        return [CheckTarget(host="main", runner="local", extra={"home": str(home)})]

    def gpu_units(self) -> list[GpuUnit]:
        return [GpuUnit(**unit) for unit in self.config.get("gpus", [])]

    def keeps_gpu_when_suspended(self, handle: Handle) -> bool:
        return self.config.get("gpu_on_suspend", "keep") != "release"

    def rebind_gpu(self, handle: Handle, unit: GpuUnit) -> Handle:
        """Records the unit the object now holds (a saved lab resumed on another GPU)."""
        record = self._load(handle["key"])
        if record is not None:
            record["gpu"] = unit.key
            self._save(handle["key"], record)
        return handle

    def list_managed(self) -> list[ManagedObject]:
        self._call("list_managed")
        return [ManagedObject(rec["lab_id"], {"key": key}) for key, rec in self._records()]

    def available(self) -> bool:
        return not self.config.get("down", False)

    # -- behaviour ------------------------------------------------------------------------------------
    def _call(self, operation: str) -> None:
        """Block like a remote API would, then raise the scripted error for this operation if any."""
        latency = float(self.config.get("call_latency", 0))
        if latency:
            time.sleep(latency)
        kind = self.config.get("fail", {}).get(operation)
        if kind and self._count_failure(operation):
            raise ERRORS[kind](f"scripted {kind} failure in {operation}", f"The lab backend failed ({kind}).")

    def _log(self, operation: str, lab_id: int) -> None:
        """One line in `calls.log` per call that changes an object (see the module docstring)."""
        if self._dir is None:
            return
        job = get_current_job()
        line = f"{operation} {lab_id} {os.getpid()} {job.id if job else '-'}\n"
        descriptor = os.open(self._dir / CALL_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line.encode())
        finally:
            os.close(descriptor)

    def _count_failure(self, operation: str) -> bool:
        """True while the scripted number of failures for `operation` is not yet used up."""
        limit = self.config.get("fail_times")
        if limit is None:
            return True
        key = f"failures-{operation}"
        used = (self._load(key) or {}).get("count", 0)
        if used >= int(limit):
            return False
        self._save(key, {"count": used + 1})
        return True

    def _after(self, operation: str) -> float:
        return self.clock() + float(self.config.get(f"{operation}_delay", 0))

    def _transit(self, handle: Handle, operation: str, state: str) -> None:
        self._call(operation)
        self._log(operation, _lab_of(handle))
        record = self._load(handle["key"])
        if record is None:
            raise PermanentError(f"{handle['key']} is gone", "This lab no longer exists on its backend.")
        record.update(state=state, until=self._after(operation))
        self._save(handle["key"], record)

    def _settle(self, key: str, record: dict[str, Any]) -> Observation:
        """Finish a transition whose time has come, and describe the record."""
        settled = {"pending": "ready", "resuming": "ready", "suspending": "suspended"}
        if record["state"] in settled and self.clock() >= record["until"]:
            record["state"] = settled[record["state"]]
            self._save(key, record)
        state = record["state"]
        if state == "ready":
            return Observation(ObservedState.READY, 100, "ready")
        if state == "suspended":
            return Observation(ObservedState.SUSPENDED, 100, "suspended")
        return Observation(ObservedState.PENDING, 50, state)

    # -- storage --------------------------------------------------------------------------------------
    def _memory(self) -> dict[str, dict[str, Any]]:
        return _MEMORY.setdefault(self.name, {})

    def _load(self, key: str) -> dict[str, Any] | None:
        if self._dir is None:
            record = self._memory().get(key)
            return dict(record) if record else None
        try:
            return json.loads((self._dir / f"{key}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _save(self, key: str, record: dict[str, Any]) -> None:
        if self._dir is None:
            self._memory()[key] = dict(record)
            return
        with _locked(self._dir):
            tmp = self._dir / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record))
            tmp.replace(self._dir / f"{key}.json")

    def _remove(self, key: str) -> None:
        if self._dir is None:
            self._memory().pop(key, None)
        else:
            (self._dir / f"{key}.json").unlink(missing_ok=True)

    def _keys(self) -> list[str]:
        if self._dir is None:
            return [k for k in self._memory() if k.startswith("labdesk-lab-")]
        return [p.stem for p in self._dir.glob("labdesk-lab-*.json")]

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key in self._keys():
            record = self._load(key)
            if record is not None:
                yield key, record


class _locked:
    """An exclusive lock on the state directory, so concurrent workers never tear a record."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / ".lock"

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _lab_of(handle: Handle) -> int:
    """The lab id in a handle's key (`labdesk-lab-<id>`, LabSpec.name); 0 for a key a test made up."""
    tail = str(handle.get("key", "")).rsplit("-", 1)[-1]
    return int(tail) if tail.isascii() and tail.isdigit() else 0


def read_call_log(state_dir: str | os.PathLike[str]) -> list[tuple[str, int, int, str]]:
    """Every (operation, lab id, pid, job id) the backend in `state_dir` logged, in order."""
    path = Path(state_dir) / CALL_LOG
    if not path.exists():
        return []
    rows = [line.split(" ") for line in path.read_text().splitlines() if line]
    return [(op, int(lab), int(pid), job) for op, lab, pid, job in rows]


def reset_memory() -> None:
    """Forget every in-memory fake backend (between tests or simulation runs)."""
    _MEMORY.clear()
