"""VagrantConnector: each lab is a Vagrant machine in a directory of its own, made from the course's box.

Many courses already ship their lab as a Vagrant box and a Vagrantfile for learners' laptops. This runs the
same box on a server (the libvirt provider by default; any provider the admin configures), so learners
whose laptops cannot run it get the identical lab in the browser, and anyone can take it home (broker
take-away bundles render the same template with HOSTED false).

Per lab (connectors.vagrant.labdir): the catalogue's Vagrantfile template rendered with the lab's box,
resources and forwarded ports (from the backend's range, on `host_address`, where guacd connects), plus a
server block (provider URI, storage pool, suspend mode, LabDesk's SSH key). `provision` checks the box is
installed, renders, and starts `vagrant up` in the background (connectors.vagrant.runner); `observe` reads
how it went and then `vagrant status`; suspend/resume/delete run `vagrant suspend|resume|destroy -f` in the
worker. Every operation on one lab holds the lab's lock (flock), so operations on one lab are serialised
across workers while different labs run in parallel. Credentials: derived from the backend's seed
(connectors.credentials), set at first boot (connectors.vagrant.credentials); nothing secret is stored.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from broker.connector import (
    Box,
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
from broker.errors import CapacityError, PermanentError, TransientError
from broker.vagrantfile import TemplateError, port_placeholders, provider_block, render
from connectors.credentials import LabCredentials, derive
from connectors.vagrant import boxes as box_store
from connectors.vagrant import config as settings_module
from connectors.vagrant import credentials, errors, ports, records
from connectors.vagrant.cli import VagrantCli, VagrantError
from connectors.vagrant.labdir import Busy, LabDir, all_in

SHIPPED_CREDENTIALS = Path(__file__).resolve().parents[2] / "desktop-images" / "vagrant" / "credentials.sh"
PROTOCOL_PORTS = {"ssh": "SSH_PORT", "rdp": "RDP_PORT", "vnc": "VNC_PORT"}
TYPICAL_UP = 60.0  # seconds, for the progress estimate while `vagrant up` runs
MAX_UP_ATTEMPTS = 3  # runners started for one lab before an interrupted `up` counts as failed
SERVER_BLOCK = """
# --- LabDesk server settings: not part of the lab (a take-away bundle has none of this) ---
Vagrant.configure("2") do |config|
  if ENV["LABDESK_SSH_KEY"]
    config.ssh.private_key_path = [ENV["LABDESK_SSH_KEY"], *ENV.fetch("LABDESK_BOX_KEYS", "").split(File::PATH_SEPARATOR)]
  end
end
"""


class VagrantConnector(Connector):
    """Labs as Vagrant machines on this host, one directory each under the backend's `state_dir`."""

    capabilities = frozenset({Capability.SUSPEND})

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        self.settings = settings_module.parse(name, config)
        self.cli = VagrantCli(self.settings.home, self.settings.binary, self.settings.env)

    # -- the connector interface ---------------------------------------------------------------------------
    def provision(self, spec: LabSpec) -> Handle:
        """Make the lab's directory and start `vagrant up` in the background (or adopt what exists)."""
        lab = LabDir.of(self.settings.state_dir, spec.lab_id)
        if not lab.exists():
            self._check_box(spec)
            with self._allocation():
                if not lab.exists():
                    self._create(lab, spec)
        if not lab.busy() and lab.read("up.json").get("state") in (None, "running"):
            self._start_up(lab, spec.lab_id)
        return self._handle(lab)

    def observe(self, handle: Handle) -> Observation:
        lab = self._lab(handle)
        if not lab.exists():
            return Observation(ObservedState.GONE, 0, "The lab machine no longer exists.")
        up = lab.read("up.json")
        if lab.busy():
            return _busy(up)
        if up.get("state") != "done":
            return self._after_runner(lab, up, handle)
        return self._observe_machine(lab)

    def suspend(self, handle: Handle) -> None:
        """`vagrant suspend` (with the libvirt provider a managed save, so the lab costs no memory meanwhile),
        or `vagrant halt` where the backend says so (providers or machines that cannot save their memory)."""
        lab = self._existing(handle, "suspending")
        verb = self.settings.suspend_by
        with self._operation(lab, verb):
            if not lab.read().get("suspended"):  # Vagrant itself leaves a machine that is not running alone
                self._vagrant(lab, verb, timeout=self.settings.timeouts[verb])
            lab.update(suspended=True, halted=verb == "halt")

    def resume(self, handle: Handle) -> None:
        """`vagrant resume` of a suspended machine (`up` if it was powered off); Vagrant waits for SSH."""
        lab = self._existing(handle, "resuming")
        with self._operation(lab, "resume"):
            state = self._state(lab)
            if state != "running":
                record = lab.read()
                verb = "resume" if record.get("suspended") and not record.get("halted") else "up"
                self._vagrant(lab, verb, timeout=self.settings.timeouts["resume"])
                if verb == "up":  # a booted machine may have come back with the box's credentials
                    self._ensure_credentials(lab)
            lab.update(suspended=False, halted=False)

    def delete(self, handle: Handle) -> None:
        """Stop a running `up`, `vagrant destroy -f`, remove the directory; a lab already gone is fine."""
        lab = self._lab(handle)
        if not lab.path.exists() and not lab.restore_from_spare():
            self._destroy_by_id(lab, handle.get("machine_id"))
            return
        self._stop_runner(lab)
        with self._operation(lab, "destroy"):
            if (lab.path / "Vagrantfile").exists():
                self._vagrant(lab, "destroy", "-f", timeout=self.settings.timeouts["destroy"])
            lab.remove()

    def endpoints(self, handle: Handle) -> list[DesktopEndpoint]:
        lab = self._existing(handle, "reading the lab's ports")
        record = lab.read()
        secrets = self._credentials(lab.lab_id)
        found = [self._endpoint(record, port, secrets) for port in record.get("protocols", [])]
        found = [endpoint for endpoint in found if endpoint is not None]
        if not found:
            raise PermanentError(f"{lab.machine}: no endpoint (ports {record.get('ports')})", errors.BROKEN)
        return found

    def check_targets(self, handle: Handle) -> list[CheckTarget]:
        """Checks run over Vagrant's own SSH path into the machine, with LabDesk's service key."""
        lab = self._existing(handle, "finding where checks run")
        record = lab.read()
        ssh = record.get("ssh")
        if not ssh:
            raise TransientError(f"{lab.machine}: not up yet", errors.UNREACHABLE)
        user = self.settings.check_user or ssh["user"]
        key = self._credentials(lab.lab_id).service_private_key
        return [CheckTarget(host=record.get("host", "main"), runner="ssh", address=ssh["host"], port=ssh["port"], user=user, private_key=key)]

    def list_managed(self) -> list[ManagedObject]:
        """The lab directories, plus machines Vagrant still knows in our state dir whose directory is gone
        (`delete` destroys those from the directory's spare copy)."""
        managed = [ManagedObject(lab.lab_id, self._handle(lab)) for lab in all_in(self.settings.state_dir)]
        known = {obj.lab_id for obj in managed}
        for kept in all_in(self.settings.state_dir / ".spares") + all_in(self.settings.state_dir / ".lost"):
            if kept.lab_id not in known:
                managed.append(ManagedObject(kept.lab_id, {**self._handle(kept), **kept.read(), "machine": kept.machine}))
                known.add(kept.lab_id)
        for entry in self._global_status():
            lab = LabDir(Path(entry.directory))
            if lab.path.parent == self.settings.state_dir and _is_lab(lab) and lab.lab_id not in known:
                managed.append(ManagedObject(lab.lab_id, {**self._handle(lab), "machine_id": entry.id}))
        return managed

    def available(self) -> bool:
        try:
            self.cli.run("--version", timeout=self.settings.timeouts["status"])
        except VagrantError:
            return False
        return True

    # -- provisioning --------------------------------------------------------------------------------------
    def _create(self, lab: LabDir, spec: LabSpec) -> None:
        """Render the lab's Vagrantfile and record the lab (inside the allocation lock)."""
        if len(all_in(self.settings.state_dir)) >= self.settings.max_labs:
            raise CapacityError(f"{self.name}: {self.settings.max_labs} labs already", errors.FULL)
        vagrant = _vagrant_params(spec)
        template = vagrant.get("template") or ""
        host = (spec.params.get("hosts") or [{}])[0]
        protocols = [port["protocol"] for port in host.get("ports", []) if port.get("protocol") in PROTOCOL_PORTS]
        chosen = self._ports(template, protocols)
        values = _values(spec, lab, vagrant, chosen, self.settings.host_address)
        try:
            text = render(template, values) + SERVER_BLOCK + "\n" + provider_block(self.settings.provider, self.settings.provider_options)
        except TemplateError as exc:
            raise PermanentError(f"{spec.image}: {exc}", errors.BROKEN) from None
        scratch = lab.path.with_name(f".{lab.path.name}.new")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700, parents=True)
        (scratch / "Vagrantfile").write_text(text)
        record = {"lab_id": spec.lab_id, "box": vagrant.get("box"), "ports": chosen, "protocols": protocols,
                  "lab_user": (spec.params.get("lab_user") or {}).get("name", "learner"), "host": host.get("name", "main"),
                  "created": time.time(), "credentials_set": False, "suspended": False,
                  "credentials_script": vagrant.get("credentials_script") or ""}
        LabDir(scratch).write(record)
        scratch.rename(lab.path)

    def _ports(self, template: str, protocols: list[str]) -> dict[str, int]:
        """A port for every `*_PORT` placeholder; SSH/RDP/VNC only when the lab offers that protocol (else 0)."""
        wanted = [name for name in port_placeholders(template)
                  if name not in PROTOCOL_PORTS.values() or name in {PROTOCOL_PORTS[p] for p in protocols}]
        taken = {port for lab in all_in(self.settings.state_dir) for port in lab.read().get("ports", {}).values()}
        low, high = self.settings.forward_ports
        chosen = ports.choose(wanted, low, high, taken, self.settings.host_address)
        return {**{name: 0 for name in port_placeholders(template)}, **chosen}

    def _check_box(self, spec: LabSpec) -> None:
        """Refuse at once when the box is not installed: Vagrant would otherwise try to download it."""
        vagrant = _vagrant_params(spec)
        box, version = vagrant.get("box"), vagrant.get("box_version")
        installed = self.boxes()
        if not any(entry.name == box and entry.provider == self.settings.provider and
                   (not version or not version[0].isdigit() or entry.version == version) for entry in installed):
            wanted = f"{box} {version or ''} ({self.settings.provider})".replace("  ", " ")
            raise PermanentError(f"{self.name}: box {wanted} is not installed (labdesk boxes add {self.name} {box} SOURCE)",
                                 errors.BOX_MISSING)

    def _start_up(self, lab: LabDir, lab_id: int) -> None:
        """Start the background runner; it holds the lab's lock when this returns."""
        lab.update(up_attempts=lab.read().get("up_attempts", 0) + 1)
        job = {
            "dir": str(lab.path), "home": str(self.settings.home), "binary": self.settings.binary,
            "env": dict(self.settings.env), "provider": self.settings.provider,
            "timeout": self.settings.timeouts["up"], "status_timeout": self.settings.timeouts["status"],
            "lock_timeout": self.settings.timeouts["lock"], "service_key": self._credentials(lab_id).service_private_key,
            "credentials": self._credentials_job(lab),
        }
        answer = subprocess.run([sys.executable, "-m", "connectors.vagrant.runner"], input=json.dumps(job), text=True,
                                capture_output=True, timeout=self.settings.timeouts["lock"] + 30,
                                cwd=Path(__file__).resolve().parents[2])
        if not answer.stdout.strip().isdigit():
            raise TransientError(f"{lab.machine}: the up runner did not start: {answer.stdout}{answer.stderr}"[-2000:], errors.BUSY)

    def _credentials_job(self, lab: LabDir) -> dict[str, Any]:
        """The credentials script and its arguments (connectors.vagrant.credentials)."""
        secrets, record = self._credentials(lab.lab_id), lab.read()
        vnc = secrets.vnc_passwd_b64 if "vnc" in record["protocols"] else ""
        return {"script": self._credentials_script(lab), "args": [
            record["lab_user"], secrets.password_hash, secrets.learner_public_key, secrets.service_public_key, vnc]}

    def _ensure_credentials(self, lab: LabDir) -> None:
        """Run the credentials script again (it is idempotent) over Vagrant's SSH path."""
        service_key = self._credentials(lab.lab_id).service_private_key
        try:
            with lab.key_file(service_key) as env:
                credentials.ensure(lab, self.cli, self._credentials_job(lab), service_key, self.settings.timeouts["status"], env)
        except VagrantError as exc:
            raise errors.to_broker(exc.kind, exc.message, f"vagrant ssh-config of {lab.machine}") from None
        except credentials.InjectionFailed as exc:
            raise PermanentError(f"{lab.machine}: {exc}", errors.FAILED) from None

    def _credentials_script(self, lab: LabDir) -> str:
        script = lab.read().get("credentials_script")
        return script or SHIPPED_CREDENTIALS.read_text()

    # -- observing -----------------------------------------------------------------------------------------
    def _after_runner(self, lab: LabDir, up: dict[str, Any], handle: Handle) -> Observation:
        """No runner holds the lab: it failed, or it was killed (start another, a few times at most)."""
        if up.get("state") == "failed":
            error = errors.to_broker(up.get("kind", ""), up.get("message", ""), f"vagrant up of {lab.machine}")
            return Observation(ObservedState.ERROR, 0, error.user_message or errors.FAILED)
        if lab.read().get("up_attempts", 0) >= MAX_UP_ATTEMPTS:
            return Observation(ObservedState.ERROR, 0, errors.FAILED)
        self._start_up(lab, lab.lab_id)
        return _busy(lab.read("up.json"))

    def _observe_machine(self, lab: LabDir) -> Observation:
        state = self._state(lab)
        suspended = lab.read().get("suspended", False)
        if state == "running":
            return Observation(ObservedState.READY, 100, "")
        if state == "not_created":
            return Observation(ObservedState.GONE, 0, "The lab machine no longer exists.")
        if state in ("paused", "saved", "suspended", "pmsuspended") or (state == "shutoff" and suspended):
            return Observation(ObservedState.SUSPENDED, 100, "")
        if state == "shutoff":
            return Observation(ObservedState.ERROR, 0, "The lab machine was switched off.")
        return Observation(ObservedState.PENDING, 50, f"The lab machine is {state.replace('_', ' ')}.")

    def _state(self, lab: LabDir) -> str:
        output = self._vagrant(lab, "status", timeout=self.settings.timeouts["status"], log=False)
        return records.for_machine(records.states(output), lab.machine) or "unknown"

    def _global_status(self) -> list[records.GlobalEntry]:
        try:
            result = self.cli.run("global-status", timeout=self.settings.timeouts["status"])
        except VagrantError as exc:
            raise errors.to_broker(exc.kind, exc.message, "vagrant global-status") from None
        return records.global_status(result.output)

    # -- running Vagrant -----------------------------------------------------------------------------------
    def _vagrant(self, lab: LabDir, *args: str, timeout: float, log: bool = True) -> records.Output:
        """Run Vagrant in the lab's directory with the service key once credentials are set."""
        key = self._credentials(lab.lab_id).service_private_key if lab.read().get("credentials_set") else None
        try:
            with lab.key_file(key) as env:
                result = self.cli.run(*args, cwd=lab.path, timeout=timeout, env=env)
        except VagrantError as exc:
            lab.log(f"{' '.join(args)}: {exc.kind}: {exc.message}")
            raise errors.to_broker(exc.kind, exc.message, f"vagrant {args[0]} of {lab.machine}") from None
        if log:
            lab.log("\n".join(f"{r.timestamp},{r.target},{r.kind},{','.join(r.data)}" for r in result.output.records))
        return result.output

    @contextmanager
    def _operation(self, lab: LabDir, what: str) -> Iterator[None]:
        try:
            with lab.locked(self.settings.timeouts["lock"]):
                yield
        except Busy:
            raise TransientError(f"{lab.machine}: {what} waits for another operation", errors.BUSY) from None

    @contextmanager
    def _allocation(self) -> Iterator[None]:
        """The backend-wide lock held while a lab's directory and ports are chosen."""
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.settings.state_dir / ".allocation.lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _stop_runner(self, lab: LabDir) -> None:
        """End a background `up` still running for the lab (delete wins over provisioning)."""
        up = lab.read("up.json")
        pid = up.get("pid")
        if up.get("state") != "running" or not pid or not lab.busy():
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 10
        while lab.busy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _destroy_by_id(self, lab: LabDir, machine_id: str | None) -> None:
        """A machine Vagrant knows whose directory and spare copy are both gone: try Vagrant's id. When Vagrant
        cannot act without the Vagrantfile (it then also drops the machine from its index), the machine is
        recorded under `.lost/`, so `list_managed` keeps reporting it until an admin removes it by hand."""
        lost = LabDir(self.settings.state_dir / ".lost" / lab.machine)
        machine_id = machine_id or lost.read().get("machine_id")
        if not machine_id:
            return
        try:
            self.cli.run("destroy", "-f", machine_id, cwd=self.settings.state_dir, timeout=self.settings.timeouts["destroy"])
            shutil.rmtree(lost.path, ignore_errors=True)
            return
        except VagrantError as exc:
            cause = errors.short(exc.kind)
        message = (f"{self.name}: Vagrant machine {machine_id} ({lab.machine}) lost its directory and Vagrant cannot destroy it "
                   f"({cause}): remove it with the provider's own tools, then remove {lost.path}")
        lost.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        lost.write({"machine_id": machine_id, "message": message})
        raise PermanentError(message, errors.FAILED)

    # -- boxes ---------------------------------------------------------------------------------------------
    def boxes(self) -> list[Box]:
        """The boxes in this backend's VAGRANT_HOME (connectors.vagrant.boxes has the why of all three)."""
        return box_store.installed(self.cli, self.settings)

    def add_box(self, name: str, source: str, version: str | None = None, force: bool = False) -> Box:
        return box_store.add(self.cli, self.settings, name, source, version, force)

    def remove_box(self, name: str, version: str | None = None, force: bool = False) -> list[Box]:
        return box_store.remove(self.cli, self.settings, name, version, force)

    # -- small helpers -------------------------------------------------------------------------------------
    def _credentials(self, lab_id: int) -> LabCredentials:
        return derive(self.settings.credential_seed or "", lab_id)

    def _endpoint(self, record: dict[str, Any], protocol: str, secrets: LabCredentials) -> DesktopEndpoint | None:
        port = record.get("ports", {}).get(PROTOCOL_PORTS[protocol], 0)
        ssh = record.get("ssh") or {}
        host = self.settings.host_address
        if not port and protocol == "ssh" and ssh:
            host, port = ssh["host"], ssh["port"]  # no forward in the template: Vagrant's own SSH path
        if not port:
            return None
        password = secrets.vnc_password if protocol == "vnc" else secrets.password
        return DesktopEndpoint(protocol, host, port, None if protocol == "vnc" else record["lab_user"], password, name=record.get("host", "main"))

    def _lab(self, handle: Handle) -> LabDir:
        return LabDir.of(self.settings.state_dir, int(handle["lab_id"]))

    def _existing(self, handle: Handle, doing: str) -> LabDir:
        lab = self._lab(handle)
        if not lab.exists():
            raise PermanentError(f"{lab.machine}: gone while {doing}", "The lab machine no longer exists.")
        return lab

    def _handle(self, lab: LabDir) -> Handle:
        return {"lab_id": lab.lab_id, "machine": lab.machine}


def _vagrant_params(spec: LabSpec) -> dict[str, Any]:
    vagrant = (spec.params.get("backends") or {}).get("vagrant")
    if not vagrant or not vagrant.get("template"):
        raise PermanentError(f"image {spec.image} has no [backends.vagrant] section", errors.BROKEN)
    return vagrant


def _values(spec: LabSpec, lab: LabDir, vagrant: dict[str, Any], chosen: dict[str, int], address: str) -> dict[str, Any]:
    """The template's placeholders for a hosted lab (docs/vagrant.md lists them)."""
    resources = spec.params.get("resources") or {}
    return {
        "LAB_NAME": lab.machine, "BOX": vagrant["box"], "BOX_VERSION": vagrant.get("box_version"),
        "MEMORY_MB": int(resources.get("ram_mb", 1024)), "CPUS": int(resources.get("vcpu", 1)),
        "HOST_IP": address, "HOSTED": True, "WORK_FOLDER": vagrant.get("work_folder"), **chosen,
    }


def _busy(up: dict[str, Any]) -> Observation:
    if up.get("state") != "running":
        return Observation(ObservedState.PENDING, 50, "Your lab machine is busy; one moment…")
    elapsed = time.time() - up.get("started", time.time())
    progress = min(95, 5 + int(90 * elapsed / TYPICAL_UP))
    return Observation(ObservedState.PENDING, progress, "Starting your lab machine…")


def _is_lab(lab: LabDir) -> bool:
    try:
        lab.lab_id
    except ValueError:
        return False
    return True
