"""LocalConnector: the embedded default backend, where each lab is a real X desktop on the broker's host.

It needs no cloud and no hypervisor, only Xvfb and x11vnc (openbox and the lab app are optional), so a
fresh install can serve labs at once. Each lab is a directory `<state_dir>/labdesk-lab-<id>/` and one
process group (see `desktop`); all state lives on disk and in /proc, so any rq worker process can act
on a lab another one created.

Settings: `state_dir` (default `$XDG_RUNTIME_DIR/labdesk-local`, else `/tmp/labdesk-local`), `command`
(the lab app, run by `sh -c`; default `xterm` if installed, "" for none; a catalogue entry's
`[backends.local] command` wins), `window_manager` (default
`openbox` if installed, "" for none), `xvfb` and `x11vnc` (program names or paths).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from broker.connector import (
    Capability,
    CheckTarget,
    Connector,
    DesktopEndpoint,
    Handle,
    LabSpec,
    ManagedObject,
    Observation,
    ObservedState,
)
from broker.errors import PermanentError, TransientError
from connectors.local import displays, labs, processes
from connectors.local.desktop import Desktop, marker
from connectors.local.password import new_password, read_password, write_password
from connectors.local.ports import free_port
from connectors.local.probe import speaks_rfb
from connectors.local.xauth import write_authority

HOST = "127.0.0.1"
SETTLE_SECONDS = 2.0
GONE_MESSAGE = "This lab no longer exists on its backend."


def default_state_dir() -> Path:
    """A per-user runtime directory when there is one (tmpfs, private), else a directory in /tmp."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime, "labdesk-local") if runtime else Path("/tmp/labdesk-local")


def _catalogue_command(spec: LabSpec) -> str | None:
    """The lab app the image's catalogue entry names (`[backends.local] command`), if any: it wins over
    the backend's `command` setting, so one local backend can serve several catalogue labs."""
    backends = spec.params.get("backends")
    local = backends.get("local") if isinstance(backends, dict) else None
    command = local.get("command") if isinstance(local, dict) else None
    return command if isinstance(command, str) else None


def _installed_or_none(program: str) -> str:
    """`program` if it is on PATH, else "" (the optional parts of a desktop are left out, not required)."""
    return program if shutil.which(program) else ""


class LocalConnector(Connector):
    """Labs as Xvfb + x11vnc desktops on this host, suspended by stopping their process group."""

    capabilities = frozenset({Capability.SUSPEND})

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        self.state_dir = Path(self.config.get("state_dir") or default_state_dir())

    # -- the connector interface -------------------------------------------------------------------
    def provision(self, spec: LabSpec) -> Handle:
        """Under the lock: reuse a living desktop for this lab, else start one (anew if it died)."""
        xvfb, x11vnc = self._programs()
        self._prepare_state_dir()
        lab_dir = self.state_dir / spec.name
        with labs.locked(self.state_dir):
            record = labs.read_record(lab_dir)
            if record is None or not self._members(lab_dir, record):
                if record is not None:
                    displays.clear_stale(record.display)
                self._start(spec.lab_id, lab_dir, xvfb, x11vnc, _catalogue_command(spec))
        return self._handle(spec.lab_id, lab_dir)

    def observe(self, handle: Handle) -> Observation:
        """Read /proc and the VNC port, never waitpid: the desktop is no child of this process."""
        lab_dir = self._lab_dir(handle)
        record = labs.read_record(lab_dir)
        if record is None:
            return Observation(ObservedState.GONE, 0, "deleted")
        members = self._members(lab_dir, record)
        if not members:
            return Observation(ObservedState.GONE, 0, "the desktop's processes have exited")
        stopped = [m for m in members if m.stopped]
        if len(stopped) == len(members):
            return Observation(ObservedState.SUSPENDED, 100, "suspended")
        if stopped:
            return Observation(ObservedState.PENDING, 50, "pausing or resuming the desktop")
        return self._startup(record)

    def suspend(self, handle: Handle) -> None:
        """Stop every process of the desktop; memory stays, CPU is freed at once.

        SIGSTOP is delivered asynchronously, so this waits (briefly) until /proc shows every process
        stopped: when it returns, the lab is suspended and the worker's next look confirms it.
        """
        self._signal(handle, signal.SIGSTOP)
        deadline = time.monotonic() + SETTLE_SECONDS
        settled = (ObservedState.SUSPENDED, ObservedState.GONE)
        while self.observe(handle).state not in settled and time.monotonic() < deadline:
            time.sleep(0.01)

    def resume(self, handle: Handle) -> None:
        """Let the stopped desktop run again, with the same display, port and password."""
        self._signal(handle, signal.SIGCONT)

    def delete(self, handle: Handle) -> None:
        """End the process group (even a stopped one) and remove the lab directory; gone is fine."""
        lab_dir = self._lab_dir(handle)
        if not lab_dir.parent.is_dir():
            return
        with labs.locked(lab_dir.parent):
            record = labs.read_record(lab_dir)
            if record is not None:
                processes.end_group(record.pgid, marker(lab_dir))
                displays.clear_stale(record.display)
            shutil.rmtree(lab_dir, ignore_errors=True)

    def endpoints(self, handle: Handle) -> list[DesktopEndpoint]:
        """The VNC server on loopback, with the password read from its 0600 file."""
        lab_dir = self._lab_dir(handle)
        record = labs.read_record(lab_dir)
        try:
            password = read_password(Path(record.password_file)) if record else None
        except (OSError, IndexError):
            password = None
        if record is None or password is None:
            raise PermanentError(f"{lab_dir} has no record or password", GONE_MESSAGE)
        return [DesktopEndpoint("vnc", HOST, record.port, password=password)]

    def list_managed(self) -> list[ManagedObject]:
        """Every lab directory with a record under state_dir, running or not."""
        return [ManagedObject(r.lab_id, self._handle(r.lab_id, d)) for d, r in labs.records(self.state_dir)]

    def check_targets(self, handle: Handle) -> list[CheckTarget]:
        """The lab's one machine is this host: checks run by the `local` grading hook as the LabDesk user,
        in the lab's directory, which is also the HOME its desktop gets (connectors.local.desktop)."""
        lab_dir = self._lab_dir(handle)
        record = labs.read_record(lab_dir)
        if record is None or not self._members(lab_dir, record):
            raise PermanentError(f"{lab_dir} is gone", GONE_MESSAGE)
        return [CheckTarget(host="main", runner="local", extra={"home": str(lab_dir)})]

    def available(self) -> bool:
        """Xvfb and x11vnc are installed and state_dir is ours and writable."""
        try:
            self._programs()
            self._prepare_state_dir()
        except PermanentError:
            return False
        return True

    # -- behaviour ------------------------------------------------------------------------------------
    def _programs(self) -> tuple[str, str]:
        """The paths of Xvfb and x11vnc; a server without them cannot host a single lab."""
        found = []
        for key, program in (("xvfb", "Xvfb"), ("x11vnc", "x11vnc")):
            path = shutil.which(self.config.get(key) or program)
            if path is None:
                raise PermanentError(
                    f"{program} not found (setting {key!r} of backend {self.name!r})",
                    f"This server cannot start local desktops: {program} is not installed.",
                )
            found.append(path)
        return found[0], found[1]

    def _prepare_state_dir(self) -> None:
        """Create state_dir private to us; refuse one that another user owns (it sits in /tmp)."""
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            owner = self.state_dir.stat().st_uid
        except OSError as exc:
            raise PermanentError(f"cannot create {self.state_dir}: {exc}", self._no_dir_message()) from exc
        if owner != os.getuid() or not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise PermanentError(f"{self.state_dir} is not ours or not writable", self._no_dir_message())

    def _no_dir_message(self) -> str:
        """What a learner reads when state_dir is unusable."""
        return "This server cannot start local desktops: its state directory is not writable."

    def _start(self, lab_id: int, lab_dir: Path, xvfb: str, x11vnc: str, command: str | None = None) -> None:
        """Create the lab afresh (over the leftovers of a desktop that died): files, then processes."""
        shutil.rmtree(lab_dir, ignore_errors=True)
        lab_dir.mkdir(mode=0o700)
        desktop = self._desktop(lab_dir, xvfb, x11vnc, command)
        write_password(desktop.password_file, new_password())
        write_authority(desktop.xauthority, desktop.display)
        try:
            pgid, pid = processes.start_detached(desktop.argv(), desktop.env(), desktop.log)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            shutil.rmtree(lab_dir, ignore_errors=True)
            message = "The lab's desktop could not start."
            raise TransientError(f"cannot start the desktop: {exc}", message) from exc
        record = labs.LabRecord(lab_id, desktop.display, desktop.port, pgid, pid, str(desktop.password_file))
        labs.write_record(lab_dir, record)

    def _desktop(self, lab_dir: Path, xvfb: str, x11vnc: str, command: str | None = None) -> Desktop:
        """A display and port no other lab holds or has reserved (the caller holds the lock)."""
        reserved = [record for _, record in labs.records(self.state_dir)]
        display = displays.first_free(displays.in_use() | {r.display for r in reserved})
        port = free_port(HOST, {r.port for r in reserved})
        window_manager = self.config.get("window_manager", _installed_or_none("openbox"))
        if command is None:
            command = self.config.get("command", _installed_or_none("xterm"))
        return Desktop(lab_dir, display, port, xvfb, x11vnc, window_manager or "", command or "")

    def _startup(self, record: labs.LabRecord) -> Observation:
        """How far a running desktop has come: X server up, then VNC server answering."""
        if speaks_rfb(HOST, record.port):
            return Observation(ObservedState.READY, 100, "ready")
        if displays.TMP.joinpath(".X11-unix", f"X{record.display}").exists():
            return Observation(ObservedState.PENDING, 60, "starting the VNC server")
        return Observation(ObservedState.PENDING, 20, "starting the desktop")

    def _members(self, lab_dir: Path, record: labs.LabRecord) -> list[processes.ProcStat]:
        """The live processes of the lab's group, recognised by their marker."""
        return processes.group(record.pgid, marker(lab_dir))

    def _signal(self, handle: Handle, sig: int) -> None:
        """Send `sig` to the lab's whole process group, or fail if the lab is gone."""
        lab_dir = self._lab_dir(handle)
        record = labs.read_record(lab_dir)
        if record is None or not self._members(lab_dir, record):
            raise PermanentError(f"{lab_dir} is gone", GONE_MESSAGE)
        if not processes.signal_group(record.pgid, sig):
            raise PermanentError(f"{lab_dir} ended just now", GONE_MESSAGE)

    def _lab_dir(self, handle: Handle) -> Path:
        """The handle's directory, checked to be a lab directory so `delete` can never remove another."""
        lab_dir = Path(handle["dir"])
        if lab_dir.name != f"{labs.PREFIX}{handle['lab_id']}":
            raise PermanentError(f"not a lab handle: {handle!r}", GONE_MESSAGE)
        return lab_dir

    @staticmethod
    def _handle(lab_id: int, lab_dir: Path) -> Handle:
        """The JSON-able handle the broker stores: no secret in it."""
        return {"lab_id": lab_id, "dir": str(lab_dir)}
