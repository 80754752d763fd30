"""LibvirtConnector: each lab is one libvirt domain (a QEMU VM) on one of the backend's hosts.

Why libvirt directly (not a cloud): a lab room's own servers, a GPU box lent for a course, a laptop for a
workshop. libvirt gives what labs need with no service of our own on the host: copy-on-write disks on a
shared base image (storage pools), suspend to disk (managed save) so a learner's machine costs nothing while
they are away, a guest agent to set credentials and run checks without a network, and events.

The handle names the host and the domain plus what `endpoints` and `observe` need from the catalogue entry
(protocols, lab user, whether the image runs the agent). Nothing secret is in it: the lab's password, VNC
password and keys are derived from the backend's `credential_seed` (connectors.credentials). The settings are
documented in connectors.libvirt.config and docs/libvirt.md (which also describes the lifecycle below).

Provision: find the lab's domain on any host (idempotent), else place it (a GPU lab on its unit's host,
others on the first host with room, counting LabDesk's own domains there), create its disks in the host's
pool (a qcow2 overlay on the base image, a cloud-init seed), define it, count again (two workers may have
placed two labs into the last room at once: the later one undefines itself and tries the next host), create
its vGPU if needed, and start it. Observe maps the domain's state, the agent's answer and the endpoint's
reachability to PENDING/READY/SUSPENDED/GONE/ERROR, and sets the learner's password and key through the agent
the first time it answers. Suspend is a managed save, except for a domain holding a GPU on a host that cannot
save one (`gpu_save`): it is paused in memory.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any, Callable, Iterator, Mapping

import libvirt
import libvirt_qemu

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
from broker.errors import CapacityError, ConfigError, ConnectorError, PermanentError, TransientError, Unsupported
from connectors.credentials import LabCredentials, derive
from connectors.libvirt import config as settings_module
from connectors.libvirt import domain_xml, events, inventory, placement, seed, volumes
from connectors.libvirt.config import HostSettings, LibvirtSettings

log = logging.getLogger(__name__)

NOT_ANSWERING = "The lab host is not answering; retrying."
BROKEN_IMAGE = "This lab's machine image is missing on the lab host. Please tell your instructor."
REFUSED = "The lab host refused to start this lab. Please tell your instructor."
GPU_FAILED = "The GPU for this lab could not be given to it. Please tell your instructor."
FULL = "No lab machine is free right now; your lab starts as soon as one is."
STATE_KEY = "labdesk-state"  # the element of our own runtime marks (credentials set, start time, created mdev)
DEFAULT_USER = "learner"
DEFAULT_PORTS = {"ssh": 22, "rdp": 3389, "vnc": 5900, "telnet": 23}
# libvirt error codes meaning "the host or the connection is not answering": retry later.
UNREACHABLE = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_SYSTEM_ERROR,  # only with the RPC/remote error domains, see _unreachable
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    libvirt.VIR_ERR_OPERATION_ABORTED,
}
RPC_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_SSH}
HOSTDEV_CODES = {libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_NO_NODE_DEVICE}


class DomainGone(Exception):
    """The lab's domain does not exist (VIR_ERR_NO_DOMAIN)."""


class LibvirtConnector(Connector):
    """Labs as libvirt domains on one or more hosts, each filled up to its declared capacity."""

    capabilities = frozenset({Capability.SUSPEND, Capability.GPU, Capability.MULTI_HOST})

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        self.settings: LibvirtSettings = settings_module.parse(name, config)
        self._connections: dict[str, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors still raise libvirtError

    # -- the connector interface ---------------------------------------------------------------------------
    def provision(self, spec: LabSpec) -> Handle:
        """Adopt the lab's domain if one exists on any host, else create and start it where it fits."""
        lab = _Lab.from_spec(spec, self.settings)
        for host in self.settings.hosts:
            if self._domain_or_none(host, lab.domain) is not None:
                return self._handle(lab, host.name)
        tried: list[str] = []
        while True:
            host = self._place(lab, tried)
            handle = self._create_on(host, lab, spec)
            if handle is not None:
                return handle
            tried.append(host.name)

    def observe(self, handle: Handle) -> Observation:
        host = self._host(handle)
        try:
            with self._errors(host, "reading the lab's domain"):
                domain = self._lookup(host, handle["domain"])
                state, reason = domain.state()
                return self._observe(host, handle, domain, state, reason)
        except DomainGone:
            return Observation(ObservedState.GONE, 0, "The lab machine no longer exists.")

    def suspend(self, handle: Handle) -> None:
        """Managed save (to disk), or a pause in memory where the lab holds a GPU that cannot be saved."""
        host = self._host(handle)
        with self._errors(host, "suspending the lab"), _gone_is_none():
            domain = self._lookup(host, handle["domain"])
            state = domain.state()[0]
            if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
                return  # already saved, or not running at all: nothing to suspend
            if handle.get("suspend_mode") == "pause":
                if state == libvirt.VIR_DOMAIN_RUNNING:
                    domain.suspend()
                return
            domain.managedSave(0)

    def resume(self, handle: Handle) -> None:
        """Restore a saved domain (`create` finds the managed-save image) or unpause a paused one."""
        host = self._host(handle)
        with self._errors(host, "resuming the lab"), _gone_is_none():
            domain = self._lookup(host, handle["domain"])
            state = domain.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                domain.resume()
            elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                domain.pMWakeup(0)
            elif state == libvirt.VIR_DOMAIN_SHUTOFF and domain.hasManagedSaveImage(0):
                created = self._ensure_mdev(host, handle.get("gpu"))  # another unit's, after rebind_gpu
                if created:
                    _set_mark(domain, {**_mark(domain), "mdev": created})
                self._start(host, domain)

    def delete(self, handle: Handle) -> None:
        """Destroy and undefine the domain (with its managed-save image and NVRAM), delete its volumes and the
        vGPU LabDesk created for it. Whatever is already gone is skipped."""
        host = self._host(handle)
        name = handle["domain"]
        with self._errors(host, "deleting the lab"):
            created_mdev = handle.get("mdev_created") or ""
            with _gone_is_none():
                domain = self._lookup(host, name)
                created_mdev = created_mdev or _mark(domain).get("mdev") or _mark(domain, config=True).get("mdev", "")
                if domain.isActive():
                    _ignore_invalid(domain.destroy)
                _undefine(domain)
            storage = self._pool(host, host.pool)
            for volume in (_overlay_name(name), _seed_name(name)):
                volumes.delete(storage, volume)
            if created_mdev:
                self._destroy_mdev(host, created_mdev)

    def endpoints(self, handle: Handle) -> list[DesktopEndpoint]:
        host = self._host(handle)
        with self._errors(host, "reading the lab's ports"):
            try:
                domain = self._lookup(host, handle["domain"])
            except DomainGone:
                raise PermanentError(f"domain {handle['domain']} on {host.name} is gone", "The lab machine no longer exists.") from None
            found = self._endpoints(host, handle, domain)
        if not found:
            raise PermanentError(f"domain {handle['domain']}: no endpoint (ports {handle.get('ports')})", REFUSED)
        return found

    def check_targets(self, handle: Handle) -> list[CheckTarget]:
        """One target per lab: its guest agent, reached through libvirt (no network into the guest needed)."""
        if not handle.get("agent", True):
            raise Unsupported(f"domain {handle.get('domain')}: the image runs no guest agent", "This lab cannot be checked automatically.")
        host = self._host(handle)
        return [CheckTarget(host=handle.get("machine", "main"), runner="guest_agent", extra={"uri": host.uri, "domain": handle["domain"]})]

    def list_managed(self) -> list[ManagedObject]:
        """Every LabDesk domain (by name and metadata) on every host; TransientError if a host is unreachable,
        so the reconciler never takes the labs of a host that is away for gone."""
        managed = []
        for host in self.settings.hosts:
            with self._errors(host, "listing domains"):
                for domain, lab_id in self._labdesk_domains(host):
                    managed.append(ManagedObject(lab_id, {"lab_id": lab_id, "host": host.name, "domain": domain.name()}))
        return managed

    def gpu_units(self) -> list[GpuUnit]:
        """The GPUs of every host that answers (`inventory.gpu_units` over its node devices)."""
        units: list[GpuUnit] = []
        answered = 0
        for host in self.settings.hosts:
            try:
                with self._errors(host, "listing node devices"):
                    xmls = [device.XMLDesc(0) for device in self._conn(host).listAllDevices(0)]
            except TransientError as exc:
                log.warning("libvirt backend %s: %s", self.name, exc)
                continue
            answered += 1
            units += inventory.gpu_units(host.name, xmls, host.gpus, host.create_mdevs)
        if self.settings.hosts and not answered:
            raise TransientError(f"libvirt backend {self.name}: no host answers", NOT_ANSWERING)
        return units

    def keeps_gpu_when_suspended(self, handle: Handle) -> bool:
        """False only for a lab saved to disk under `gpu_on_suspend = release`: its GPU may go to another lab."""
        return not (self.settings.gpu_on_suspend == "release" and handle.get("suspend_mode") == "save" and handle.get("gpu"))

    def rebind_gpu(self, handle: Handle, unit: GpuUnit) -> Handle:
        """Rewrite the saved lab's hostdev to `unit`, in the managed-save image and the persistent definition."""
        current = handle.get("gpu") or {}
        if current.get("key") == unit.key:
            return handle
        if unit.host != handle["host"]:
            raise Unsupported(
                f"domain {handle['domain']} is saved on {handle['host']}; GPU {unit.key} is on {unit.host}",
                "This lab can only resume on a GPU of the machine it was saved on.",
            )
        host = self._host(handle)
        with self._errors(host, "moving the lab to another GPU"):
            try:
                domain = self._lookup(host, handle["domain"])
            except DomainGone:
                raise PermanentError(f"domain {handle['domain']} is gone", "The lab machine no longer exists.") from None
            if domain.isActive():
                raise PermanentError(f"domain {handle['domain']} runs: only a saved lab can change GPU", GPU_FAILED)
            try:
                self._swap_gpu(host, domain, unit)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                raise Unsupported(f"libvirt host {host.name} cannot rewrite a saved domain: {_message(exc)}",
                                  "This lab cannot resume on another GPU.") from None
        return {**handle, "gpu": asdict(unit), "mdev_created": ""}

    def _swap_gpu(self, host: HostSettings, domain: Any, unit: GpuUnit) -> None:
        """The saved image first: if that fails, the definition still matches the image."""
        flags = libvirt.VIR_DOMAIN_XML_SECURE
        if domain.hasManagedSaveImage(0):
            saved = domain.managedSaveGetXMLDesc(flags)
            domain.managedSaveDefineXML(domain_xml.swap_gpu(saved, unit), 0)
        persistent = domain.XMLDesc(flags | libvirt.VIR_DOMAIN_XML_INACTIVE)
        self._conn(host).defineXML(domain_xml.swap_gpu(persistent, unit))

    def watch(self, notify: Callable[[int], None], stop: threading.Event) -> None:
        """Lifecycle events of LabDesk's domains on every host, until `stop` (connectors.libvirt.events)."""
        watched = [events.WatchedHost(host.name, self._event_opener(host), shared=_is_test(host)) for host in self.settings.hosts]
        events.watch_hosts(watched, self._event_lab_id, notify, stop, self._lab_ids_on)

    def available(self) -> bool:
        """True when at least one host answers."""
        for host in self.settings.hosts:
            try:
                with self._errors(host, "checking the connection"):
                    self._conn(host).getLibVersion()
                return True
            except ConnectorError as exc:
                log.warning("libvirt backend %s: %s", self.name, exc)
        return False

    def connection(self, host: str) -> Any:
        """The open libvirt connection to `host` (diagnostics and tests: a test-driver host lives in it)."""
        return self._conn(self.settings.host(host))

    # -- creating --------------------------------------------------------------------------------------------
    def _place(self, lab: _Lab, tried: list[str]) -> HostSettings:
        """The host with room for the lab (a GPU lab: its unit's host), among those not tried yet."""
        required = lab.gpu.host if lab.gpu else None
        loads = []
        for host in self.settings.hosts:
            if host.name in tried or (required and host.name != required):
                continue
            try:
                with self._errors(host, "counting its labs"):
                    placed = self._placed(host)
            except TransientError as exc:
                log.warning("libvirt backend %s: host %s skipped: %s", self.name, host.name, exc)
                continue
            used_vcpus, used_memory = sum(d.vcpus for d in placed), sum(d.memory_mb for d in placed)
            loads.append(placement.HostLoad(host.name, host.vcpus, host.memory_mb, used_vcpus, used_memory))
        if not loads:
            if tried or required:
                raise CapacityError(f"libvirt backend {self.name}: no host left for lab {lab.lab_id} (tried {tried})", FULL)
            raise TransientError(f"libvirt backend {self.name}: no host answers", NOT_ANSWERING)
        try:
            return self.settings.host(placement.choose_host(loads, lab.vcpus, lab.memory_mb, required))
        except CapacityError as exc:
            raise CapacityError(f"libvirt backend {self.name}: lab {lab.lab_id}: {exc}", exc.user_message) from None

    def _create_on(self, host: HostSettings, lab: _Lab, spec: LabSpec) -> Handle | None:
        """Create and start the lab on `host`; None when, once defined, it turned out not to fit there."""
        with self._errors(host, f"creating domain {lab.domain}"):
            try:
                disks = self._disks(host, lab)
            except (ConnectorError, libvirt.libvirtError):
                self._delete_volumes_quietly(host, lab.domain)  # no domain yet: list_managed would never find them
                raise
            domain = self._define(host, lab, disks)
            if not self._fits(host, lab.domain):
                log.info("lab %s: %s filled up meanwhile; trying another host", lab.lab_id, host.name)
                _undefine(domain)
                self._delete_volumes(host, lab.domain)
                return None
            created = self._ensure_mdev(host, asdict(lab.gpu) if lab.gpu else None)
            if created:
                _set_mark(domain, {**_mark(domain), "mdev": created})
            self._start(host, domain)
        handle = self._handle(lab, host.name)
        handle["mdev_created"] = created
        return handle

    def _disks(self, host: HostSettings, lab: _Lab) -> dict[str, str]:
        """The paths the domain XML needs: overlay, seed, kernel, initrd (whichever the image uses)."""
        paths: dict[str, str] = {}
        try:
            images = self._pool(host, host.image_pool)
            storage = self._pool(host, host.pool)
            for key in ("kernel", "initrd"):  # looked up first: a missing one creates nothing
                if lab.boot.get(key):
                    paths[key] = volumes.path_of(images, lab.boot[key])
            if lab.base_image:
                capacity = max(lab.disk_gb, volumes.capacity_gb(images, lab.base_image))
                backing = volumes.path_of(images, lab.base_image)
                paths["disk"] = volumes.ensure_overlay(storage, _overlay_name(lab.domain), capacity, backing)
        except volumes.VolumeMissing as exc:
            raise PermanentError(f"libvirt host {host.name}: image {lab.image}: {exc}", BROKEN_IMAGE) from None
        if lab.cloud_init:
            data = seed.seed_iso(*self._seed_files(lab))
            try:
                paths["seed"] = volumes.ensure_seed(self._conn(host), storage, _seed_name(lab.domain), data)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                raise PermanentError(
                    f"libvirt host {host.name} cannot upload a cloud-init seed: {_message(exc)}",
                    "This lab cannot be prepared on this lab host. Please tell your instructor.",
                ) from None
        return paths

    def _define(self, host: HostSettings, lab: _Lab, disks: dict[str, str]) -> Any:
        """Define the domain with host ports no other LabDesk domain on the host uses (checked again after
        the define, as another worker may have taken the same ports meanwhile)."""
        conn = self._conn(host)
        uuid = None  # a redefine must keep the first define's UUID, or libvirt refuses it
        for _attempt in range(5):
            forwards = self._free_ports(host, lab, exclude=lab.domain)
            plan = replace(self._plan(host, lab, disks, forwards), uuid=uuid)
            mark = {"forwards": ",".join(f"{guest}:{port}" for guest, port in sorted(forwards.items()))}
            domain = conn.defineXML(_with_mark(domain_xml.domain_xml(plan), mark))
            clash = set(forwards.values()) & self._used_ports(host, exclude=lab.domain)
            if not clash:
                return domain
            uuid = domain.UUIDString()
            log.info("lab %s: ports %s taken meanwhile on %s; choosing again", lab.lab_id, sorted(clash), host.name)
        raise TransientError(f"libvirt host {host.name}: no stable forwarded ports for {lab.domain}", NOT_ANSWERING)

    def _plan(self, host: HostSettings, lab: _Lab, disks: dict[str, str], forwards: dict[int, int]) -> domain_xml.DomainPlan:
        return domain_xml.DomainPlan(
            name=lab.domain,
            lab_id=lab.lab_id,
            vcpus=lab.vcpus,
            memory_mb=lab.memory_mb,
            domain_type=self.settings.domain_type,
            machine=lab.machine,
            disk_path=disks.get("disk"),
            seed_path=disks.get("seed"),
            kernel=disks.get("kernel"),
            initrd=disks.get("initrd"),
            cmdline=lab.boot.get("cmdline") if disks.get("kernel") else None,
            network=self.settings.network.type,
            network_name=self.settings.network.name,
            forwards=tuple((host_port, guest_port) for guest_port, host_port in sorted(forwards.items())),
            forward_address=_forward_address(host.address),
            mac=lab.mac,
            graphics=lab.graphics,
            graphics_listen=host.address,
            graphics_password=self._credentials(lab.lab_id).vnc_password if lab.graphics == "vnc" else "",
            video=lab.video,
            gpu=lab.gpu,
            prefix=self.settings.name_prefix,
            course=lab.course,
            image=lab.image,
            created=time.time(),
        )

    def _seed_files(self, lab: _Lab) -> tuple[str, str]:
        creds = self._credentials(lab.lab_id)
        user_data = seed.user_data(lab.user, creds.password_hash, [creds.learner_public_key], lab.machine_name,
                                   vnc_passwd_b64=creds.vnc_passwd_b64, lab_id=str(lab.lab_id))
        return user_data, seed.meta_data(lab.domain, lab.machine_name)

    def _fits(self, host: HostSettings, own: str) -> bool:
        return placement.fits_after_define(self._placed(host), host.vcpus, host.memory_mb, own)

    def _start(self, host: HostSettings, domain: Any) -> None:
        """Start (or restore) the domain and note when, for the boot timeout."""
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and domain.isActive():
                return  # another worker started it a moment ago
            raise
        _set_mark(domain, {**_mark(domain), "started": f"{time.time():.0f}"})

    # -- GPUs ----------------------------------------------------------------------------------------------
    def _ensure_mdev(self, host: HostSettings, unit: Mapping[str, Any] | None) -> str:
        """Create the unit's mdev when the host lets LabDesk and it does not exist: its UUID, or ""."""
        if not unit or unit.get("kind") != "mdev" or not host.create_mdevs:
            return ""
        uuid = str(unit["address"]).lower()
        conn = self._conn(host)
        if uuid in self._existing_mdevs(conn):
            return ""
        xml = (f"<device><parent>{unit['parent']}</parent><capability type='mdev'>"
               f"<type id='{unit['mdev_type']}'/><uuid>{uuid}</uuid></capability></device>")
        try:
            conn.nodeDeviceCreateXML(xml, 0)
        except libvirt.libvirtError as exc:
            if _unreachable(exc):
                raise
            raise PermanentError(
                f"libvirt host {host.name}: could not create vGPU {uuid} ({unit['mdev_type']} on {unit['parent']}): "
                f"code {exc.get_error_code()}: {_message(exc)}",
                GPU_FAILED,
            ) from None
        return uuid

    def _existing_mdevs(self, conn: Any) -> set[str]:
        flag = libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV
        found = set()
        for device in conn.listAllDevices(flag):
            mdev = inventory.read_mdev(ET.fromstring(device.XMLDesc(0)))
            if mdev is not None:
                found.add(mdev.uuid)
        return found

    def _destroy_mdev(self, host: HostSettings, uuid: str) -> None:
        conn = self._conn(host)
        for device in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV):
            mdev = inventory.read_mdev(ET.fromstring(device.XMLDesc(0)))
            if mdev is not None and mdev.uuid == uuid:
                try:
                    device.destroy()
                except libvirt.libvirtError as exc:  # left for the administrator; the lab is gone regardless
                    log.warning("libvirt host %s: could not remove vGPU %s: %s", host.name, uuid, _message(exc))

    # -- observing -----------------------------------------------------------------------------------------
    def _observe(self, host: HostSettings, handle: Handle, domain: Any, state: int, reason: int) -> Observation:
        if state == libvirt.VIR_DOMAIN_RUNNING:
            return self._readiness(host, handle, domain)
        if state == libvirt.VIR_DOMAIN_PAUSED:
            if reason in (libvirt.VIR_DOMAIN_PAUSED_USER, libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT):
                return Observation(ObservedState.SUSPENDED, 100, "The lab machine is paused.")
            if reason in (libvirt.VIR_DOMAIN_PAUSED_IOERROR, libvirt.VIR_DOMAIN_PAUSED_CRASHED, libvirt.VIR_DOMAIN_PAUSED_NOSPACE):
                return Observation(ObservedState.ERROR, 0, f"The lab machine stopped ({_paused_reason(reason)}).")
            return Observation(ObservedState.PENDING, 50, "The lab machine is being saved or restored.")
        if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            return Observation(ObservedState.SUSPENDED, 100, "The lab machine is asleep.")
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            if domain.hasManagedSaveImage(0):
                return Observation(ObservedState.SUSPENDED, 100, "The lab machine is saved to disk.")
            return Observation(ObservedState.ERROR, 0, _shutoff_message(reason))
        if state == libvirt.VIR_DOMAIN_CRASHED:
            return Observation(ObservedState.ERROR, 0, "The lab machine crashed.")
        return Observation(ObservedState.PENDING, 10, "The lab machine is changing state.")

    def _readiness(self, host: HostSettings, handle: Handle, domain: Any) -> Observation:
        """READY once the agent answers (images with one), credentials are set, and the endpoint is reachable."""
        mark = _mark(domain)
        if handle.get("agent", True):
            if not self._agent_answers(domain):
                return self._booting(mark)
            if not mark.get("credentials") and not handle.get("cloud_init"):
                problem = self._set_credentials(handle, domain)
                if problem:
                    return Observation(ObservedState.ERROR, 0, problem)
        found = self._endpoints(host, handle, domain)
        if not found:
            return Observation(ObservedState.PENDING, 80, "Waiting for the lab machine's network address.")
        if handle.get("agent", True) and not _reachable(found[0]):
            return Observation(ObservedState.PENDING, 90, f"Waiting for the lab machine's {found[0].protocol.upper()} service.")
        return Observation(ObservedState.READY, 100, "The lab machine is ready.")

    def _booting(self, mark: Mapping[str, str]) -> Observation:
        started = float(mark.get("started") or time.time())
        elapsed = time.time() - started
        if elapsed > self.settings.boot_timeout:
            return Observation(ObservedState.ERROR, 0, f"The lab machine did not start within {self.settings.boot_timeout:.0f} s.")
        progress = 20 + int(60 * min(elapsed / max(self.settings.boot_timeout / 4, 1), 1))
        return Observation(ObservedState.PENDING, progress, "The lab machine is starting.")

    def _agent_answers(self, domain: Any) -> bool:
        try:
            libvirt_qemu.qemuAgentCommand(domain, '{"execute":"guest-ping"}', min(int(self.settings.agent_timeout), 5), 0)
            return True
        except libvirt.libvirtError as exc:
            if _unreachable(exc) and exc.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                raise
            return False

    def _set_credentials(self, handle: Handle, domain: Any) -> str:
        """Give the lab user the derived password and the learner's key through the agent, once; "" or a problem."""
        creds = self._credentials(int(handle["lab_id"]))
        user = handle.get("user") or DEFAULT_USER
        try:
            self._set_password(domain, user, creds)
            domain.authorizedSSHKeysSet(user, [creds.learner_public_key], libvirt.VIR_DOMAIN_AUTHORIZED_SSH_KEYS_SET_APPEND)
        except (libvirt.libvirtError, PermanentError) as exc:
            if isinstance(exc, libvirt.libvirtError) and _unreachable(exc):
                raise
            log.warning("lab %s: setting the credentials of %s failed: %s", handle["lab_id"], user, _message(exc))
            return f"The lab machine's account {user!r} could not be prepared."
        _set_mark(domain, {**_mark(domain), "credentials": "set"})
        return ""

    def _set_password(self, domain: Any, user: str, creds: LabCredentials) -> None:
        """guest-set-user-password; where the guest lacks `chpasswd` (which qemu-ga runs for it, as on
        busybox images), the SHA-512 hash is written into /etc/shadow by guest-exec instead."""
        try:
            domain.setUserPassword(user, creds.password, 0)
            return
        except libvirt.libvirtError as exc:
            if _unreachable(exc) or "passwd" not in _message(exc):
                raise
            log.info("guest of %s has no chpasswd; writing the password hash directly", domain.name())
        script = 'grep -q "^$0:" /etc/shadow || exit 3; sed -i "s|^$0:[^:]*:|$0:$1:|" /etc/shadow'
        status = _agent_run(domain, ["/bin/sh", "-c", script, user, creds.password_hash], self.settings.agent_timeout)
        if status != 0:
            raise PermanentError(f"setting the password of {user} by guest-exec: exit status {status}", REFUSED)

    def _endpoints(self, host: HostSettings, handle: Handle, domain: Any) -> list[DesktopEndpoint]:
        """One endpoint per protocol of the image's first machine, the image's default protocol first; "vnc"
        is the domain's VNC console when it has one (then also offered, last, when the image lists no VNC)."""
        graphics = domain_xml.read_ports(domain.XMLDesc(0))
        forwards = _forwards(_mark(domain))
        guest_ip = ""
        creds = self._credentials(int(handle["lab_id"]))
        found = []
        ports = [tuple(p) for p in handle.get("ports") or []]
        if handle.get("graphics", "vnc") == "vnc" and "vnc" not in {p for p, _ in ports}:
            ports.append(("vnc", 0))  # the VNC console: always there, the last choice
        for protocol, guest_port in ports:
            if protocol == "vnc" and handle.get("graphics", "vnc") == "vnc":
                address, port = host.address, int(graphics.get("vnc") or 0)
            elif self.settings.network.type == "user":
                address, port = host.address, forwards.get(int(guest_port), 0)
            else:
                guest_ip = guest_ip or self._guest_ip(domain, handle)
                address, port = guest_ip, int(guest_port)
            if address and 0 < port < 65536:
                found.append(self._endpoint(handle, protocol, address, port, creds))
        return _named(found, handle.get("machine", "main"))

    def _endpoint(self, handle: Handle, protocol: str, address: str, port: int, creds: LabCredentials) -> DesktopEndpoint:
        console = protocol == "vnc" and handle.get("graphics", "vnc") == "vnc"
        extra = {"private-key": creds.learner_private_key} if protocol == "ssh" else {}
        return DesktopEndpoint(
            protocol=protocol,
            host=address,
            port=port,
            username=None if protocol == "vnc" else (handle.get("user") or DEFAULT_USER),
            password=creds.vnc_password if console else creds.password,
            extra=extra,
        )

    def _guest_ip(self, domain: Any, handle: Handle) -> str:
        """The guest's IPv4 address on its network: from the agent, else from the network's DHCP lease."""
        sources = [libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE]
        if handle.get("agent", True):
            sources.insert(0, libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
        for source in sources:
            try:
                interfaces = domain.interfaceAddresses(source, 0) or {}
            except libvirt.libvirtError as exc:
                if _unreachable(exc) and exc.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                    raise
                continue
            for name, interface in sorted(interfaces.items()):
                for address in interface.get("addrs") or []:
                    ip = ipaddress.ip_address(address.get("addr", "0.0.0.0"))
                    if name != "lo" and ip.version == 4 and not (ip.is_loopback or ip.is_link_local):
                        return str(ip)
        return ""

    # -- ports ---------------------------------------------------------------------------------------------
    def _free_ports(self, host: HostSettings, lab: _Lab, exclude: str) -> dict[int, int]:
        """Guest port -> a host port from `forward_ports` for each in-guest service (user-mode network only)."""
        wanted = lab.forwarded_ports()
        if self.settings.network.type != "user" or not wanted:
            return {}
        used = self._used_ports(host, exclude)
        first, last = self.settings.forward_ports
        chosen: dict[int, int] = {}
        candidates = iter(range(first, last + 1))
        for guest_port in wanted:
            for port in candidates:
                if port not in used and (not _is_local(host) or _bindable(host.address, port)):
                    chosen[guest_port] = port
                    break
            else:
                raise CapacityError(f"libvirt host {host.name}: no free port left in {first}-{last}", FULL)
        return chosen

    def _used_ports(self, host: HostSettings, exclude: str) -> set[int]:
        used: set[int] = set()
        for domain, _lab_id in self._labdesk_domains(host):
            if domain.name() != exclude:
                used |= set(_forwards(_mark(domain)).values())
        return used

    # -- domains on a host ---------------------------------------------------------------------------------
    def _labdesk_domains(self, host: HostSettings) -> Iterator[tuple[Any, int]]:
        """(domain, lab id) for every domain of this installation on the host: its name and metadata agree."""
        for domain in self._conn(host).listAllDomains(0):
            lab_id = events.lab_id_from_name(domain.name(), self.settings.name_prefix)
            if lab_id is not None and self._metadata_lab_id(domain) == lab_id:
                yield domain, lab_id

    def _metadata(self, domain: Any) -> Mapping[str, str]:
        """LabDesk's metadata of a domain, {} when it has none or is gone, or belongs to another prefix."""
        try:
            text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.METADATA_NS, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return {}
            raise
        found = domain_xml.lab_metadata(text) or {}
        return found if found.get("prefix") == self.settings.name_prefix else {}

    def _metadata_lab_id(self, domain: Any) -> int | None:
        value = self._metadata(domain).get("id", "")
        return int(value) if value.isdigit() else None

    def _placed(self, host: HostSettings) -> list[placement.PlacedDomain]:
        placed = []
        for domain, _lab_id in self._labdesk_domains(host):
            _state, max_kib, _mem, vcpus, _cpu = domain.info()
            created = float(self._metadata(domain).get("created") or 0.0)
            placed.append(placement.PlacedDomain(domain.name(), int(vcpus), int(max_kib) // 1024, created))
        return placed

    def _lab_ids_on(self, conn: Any) -> list[int]:
        ids = []
        for domain in conn.listAllDomains(0):
            lab_id = self._event_lab_id(domain)
            if lab_id is not None:
                ids.append(lab_id)
        return ids

    def _event_lab_id(self, domain: Any) -> int | None:
        """The lab of an event's domain: by name (no call back into libvirt), else by metadata."""
        lab_id = events.lab_id_from_name(domain.name(), self.settings.name_prefix)
        if lab_id is not None:
            return lab_id
        return self._metadata_lab_id(domain)

    def _event_opener(self, host: HostSettings) -> Callable[[], Any]:
        if _is_test(host):  # each open of a test URI is a fresh, empty host: watch the connector's own
            return lambda: self._conn(host)
        return lambda: libvirt.open(host.uri)

    # -- plumbing ------------------------------------------------------------------------------------------
    def _conn(self, host: HostSettings) -> Any:
        """The host's connection, opened once and kept (the test driver's state lives in its connection)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked rq work horse: the parent's sockets are not ours to use
                self._connections, self._pid = {}, os.getpid()
            conn = self._connections.get(host.name)
            if conn is not None and (_is_test(host) or _alive(conn)):
                return conn
            try:
                conn = libvirt.open(host.uri)
            except libvirt.libvirtError as exc:
                raise TransientError(f"libvirt host {host.name} ({host.uri}): cannot connect: {_message(exc)}", NOT_ANSWERING) from None
            self._connections[host.name] = conn
            return conn

    def _lookup(self, host: HostSettings, name: str) -> Any:
        try:
            return self._conn(host).lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainGone(name) from None
            raise

    def _domain_or_none(self, host: HostSettings, name: str) -> Any | None:
        try:
            with self._errors(host, "looking for the lab's domain"):
                return self._lookup(host, name)
        except DomainGone:
            return None
        except TransientError as exc:
            log.warning("libvirt backend %s: host %s not searched: %s", self.name, host.name, exc)
            return None

    def _pool(self, host: HostSettings, name: str) -> Any:
        try:
            return volumes.pool(self._conn(host), name)
        except volumes.VolumeMissing as exc:
            raise PermanentError(f"libvirt host {host.name}: {exc}", BROKEN_IMAGE) from None

    def _delete_volumes(self, host: HostSettings, name: str) -> None:
        storage = self._pool(host, host.pool)
        for volume in (_overlay_name(name), _seed_name(name)):
            volumes.delete(storage, volume)

    def _delete_volumes_quietly(self, host: HostSettings, name: str) -> None:
        try:
            self._delete_volumes(host, name)
        except (ConnectorError, libvirt.libvirtError) as exc:
            log.warning("libvirt host %s: volumes of %s left behind: %s", host.name, name, exc)

    def _host(self, handle: Handle) -> HostSettings:
        try:
            return self.settings.host(str(handle["host"]))
        except (KeyError, ConfigError) as exc:
            raise PermanentError(f"libvirt backend {self.name}: handle {handle!r}: {exc}", "The lab's host is no longer configured. Please tell your instructor.") from None

    def _handle(self, lab: _Lab, host: str) -> Handle:
        # A GPU that cannot be saved (gpu_save false: VFIO passthrough) keeps the lab in memory, paused.
        suspend_mode = "pause" if lab.gpu and not self.settings.host(host).gpu_save else "save"
        return {
            "lab_id": lab.lab_id,
            "host": host,
            "domain": lab.domain,
            "image": lab.image,
            "machine": lab.machine_name,
            "ports": [list(p) for p in lab.ports],
            "user": lab.user,
            "graphics": lab.graphics,
            "agent": lab.agent,
            "cloud_init": lab.cloud_init,
            "gpu": asdict(lab.gpu) if lab.gpu else None,
            "suspend_mode": suspend_mode,
            "mdev_created": "",
        }

    def _credentials(self, lab_id: int) -> LabCredentials:
        if not self.settings.credential_seed:
            raise ConfigError(f"libvirt backend {self.name}: the secret credential_seed is missing (labdesk backends add generates one)")
        return derive(self.settings.credential_seed, lab_id)

    @contextmanager
    def _errors(self, host: HostSettings, doing: str) -> Iterator[None]:
        """Map a libvirt error to the broker's kinds, with the host named; DomainGone passes through."""
        try:
            yield
        except libvirt.libvirtError as exc:
            where = f"libvirt host {host.name}: {doing}: code {exc.get_error_code()}: {_message(exc)}"
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainGone(where) from None
            if _unreachable(exc):
                self._forget(host)
                raise TransientError(where, NOT_ANSWERING) from None
            if exc.get_error_code() in HOSTDEV_CODES or _is_hostdev_error(exc):
                raise PermanentError(where, GPU_FAILED) from None
            raise PermanentError(where, REFUSED) from None

    def _forget(self, host: HostSettings) -> None:
        if _is_test(host):
            return
        with self._lock:
            conn = self._connections.pop(host.name, None)
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass


class _Lab:
    """What the connector reads from a LabSpec, checked once."""

    def __init__(self, spec: LabSpec, settings: LibvirtSettings) -> None:
        params = spec.params
        backend = dict((params.get("backends") or {}).get("libvirt") or {})
        resources = params.get("resources") or {}
        hosts = params.get("hosts") or [{"name": "main", "ports": [{"protocol": spec.protocol or "vnc", "port": 5900}]}]
        machine = hosts[0]
        self.lab_id = spec.lab_id
        self.image = spec.image
        self.domain = settings.domain_name(spec.lab_id)
        self.machine_name = str(machine.get("name") or "main")
        self.ports = _ordered_ports(machine.get("ports") or [], spec.protocol)
        self.user = str((params.get("lab_user") or {}).get("name") or DEFAULT_USER)
        self.vcpus = int(resources.get("vcpu") or 1)
        self.memory_mb = int(resources.get("ram_mb") or 1024)
        self.disk_gb = int(resources.get("disk_gb") or 10)
        self.base_image = str(backend.get("base_image") or "")
        self.boot = {key: str(backend[key]) for key in ("kernel", "initrd", "cmdline") if backend.get(key)}
        if not self.base_image and not self.boot.get("kernel"):
            raise PermanentError(f"image {spec.image}: [backends.libvirt] has neither base_image nor kernel", BROKEN_IMAGE)
        self.cloud_init = bool(backend.get("cloud_init", bool(self.base_image)))
        self.agent = bool(backend.get("guest_agent", True))
        self.machine = str(backend.get("machine") or "q35")
        self.video = str(backend.get("video") or "virtio")
        self.graphics = str(backend.get("graphics") or "vnc")
        self.gpu = spec.gpu
        self.course = spec.course
        # A fixed MAC for images whose network setup keys on it (the tiny test guest); user-mode NICs are
        # private to their QEMU, so labs of one image sharing it never meet.
        self.mac = str(backend["mac"]).lower() if backend.get("mac") else None

    @classmethod
    def from_spec(cls, spec: LabSpec, settings: LibvirtSettings) -> _Lab:
        return cls(spec, settings)

    def forwarded_ports(self) -> list[int]:
        """The in-guest ports reached through host forwards: every port but the VNC console's."""
        return [port for protocol, port in self.ports if not (protocol == "vnc" and self.graphics == "vnc")]


# -- helpers -----------------------------------------------------------------------------------------------
def _ordered_ports(raw: list[Mapping[str, Any]], preferred: str) -> list[tuple[str, int]]:
    ports = [(str(p["protocol"]), int(p.get("port") or DEFAULT_PORTS.get(str(p["protocol"]), 0))) for p in raw]
    ports.sort(key=lambda item: item[0] != preferred)  # stable: the default protocol first, then the entry's order
    return ports


def _named(endpoints: list[DesktopEndpoint], machine: str) -> list[DesktopEndpoint]:
    """The first endpoint is the machine's ("main"); the others "main-ssh", ... so each can be chosen."""
    named = []
    for index, endpoint in enumerate(endpoints):
        name = machine if index == 0 else f"{machine}-{endpoint.protocol}"
        named.append(DesktopEndpoint(endpoint.protocol, endpoint.host, endpoint.port, endpoint.username,
                                     endpoint.password, name, endpoint.extra))
    return named


def _forwards(mark: Mapping[str, str]) -> dict[int, int]:
    """Guest port -> host port of the user-mode forwards, as recorded in our mark ("22:42000,3389:42001").

    Recorded by us rather than read from the hostfwd arguments, which not every driver keeps (the test
    driver drops `<qemu:commandline>`).
    """
    pairs = (item.split(":") for item in (mark.get("forwards") or "").split(",") if item)
    return {int(guest): int(port) for guest, port in pairs}


def _forward_address(address: str) -> str:
    """Where user-mode forwards listen: the host's address when it is an IP (QEMU's hostfwd takes no names)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return "0.0.0.0"


def _overlay_name(domain: str) -> str:
    return f"{domain}.qcow2"


def _seed_name(domain: str) -> str:
    return f"{domain}-seed.iso"


def _state_ns() -> str:
    return domain_xml.METADATA_NS.rstrip("/") + "/state"


def _mark(domain: Any, config: bool = False) -> dict[str, str]:
    """Our runtime marks on the domain (forwards, credentials set, start time, created mdev): {} when none.
    The live domain's, or with `config` its persistent definition's (they differ after a restore)."""
    try:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, _state_ns(), flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
            return {}
        raise
    return dict(ET.fromstring(text).attrib)


def _with_mark(xml: str, values: Mapping[str, str]) -> str:
    """A domain XML with our mark added to its <metadata>, so the define records it at once."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    ET.SubElement(metadata, f"{{{_state_ns()}}}state", {key: value for key, value in values.items() if value})
    return ET.tostring(root, encoding="unicode")


def _set_mark(domain: Any, values: Mapping[str, str]) -> None:
    """Write our marks on the live domain (kept through a managed save) and its persistent definition."""
    element = ET.Element("state", {key: str(value) for key, value in values.items() if value})
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if domain.isActive() else 0)
    domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, ET.tostring(element, encoding="unicode"), STATE_KEY, _state_ns(), flags)


def _agent_run(domain: Any, argv: list[str], timeout: float) -> int | None:
    """Run a command in the guest through the agent (guest-exec, then guest-exec-status until it exits):
    its exit status, or None if it did not finish within `timeout` seconds."""
    def call(execute: str, arguments: dict[str, Any]) -> Any:
        message = json.dumps({"execute": execute, "arguments": arguments})
        return json.loads(libvirt_qemu.qemuAgentCommand(domain, message, int(timeout), 0))["return"]

    pid = call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": False})["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = call("guest-exec-status", {"pid": pid})
        if status.get("exited"):
            return int(status.get("exitcode", -1))
        time.sleep(0.1)
    return None


def _undefine(domain: Any) -> None:
    """Undefine with its managed-save image and NVRAM (drivers without NVRAM, like the test driver: without)."""
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    try:
        domain.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


def _ignore_invalid(call: Callable[[], Any]) -> None:
    """Run a state change that may already have happened (destroy of a domain that just stopped)."""
    try:
        call()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise


@contextmanager
def _gone_is_none() -> Iterator[None]:
    try:
        yield
    except DomainGone:
        pass


def _unreachable(exc: libvirt.libvirtError) -> bool:
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_SYSTEM_ERROR:  # also "Cannot find 'mdevctl'": only the RPC kind is the network
        return exc.get_error_domain() in RPC_DOMAINS
    return code in UNREACHABLE


def _is_hostdev_error(exc: libvirt.libvirtError) -> bool:
    text = _message(exc).lower()
    return any(word in text for word in ("vfio", "mdev", "hostdev", "iommu", "pci passthrough"))


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    return " ".join(((get() if get else None) or str(exc)).split())[:500]


def _is_test(host: HostSettings) -> bool:
    return host.uri.startswith("test:")


def _is_local(host: HostSettings) -> bool:
    return host.uri.startswith("qemu:///")


def _alive(conn: Any) -> bool:
    try:
        return conn.isAlive() == 1
    except libvirt.libvirtError:
        return False


def _bindable(address: str, port: int) -> bool:
    """Whether nothing listens on address:port here (a local host's forward would fail to start otherwise)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _reachable(endpoint: DesktopEndpoint) -> bool:
    """An SSH endpoint sends its banner; others accept a TCP connection. Only probed on loopback addresses,
    the only ones this worker surely shares with guacd (a remote host's address may not route from here)."""
    try:
        if not ipaddress.ip_address(endpoint.host).is_loopback:
            return True
    except ValueError:
        return True
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=2) as conn:
            if endpoint.protocol != "ssh":
                return True
            conn.settimeout(2)
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False


def _paused_reason(reason: int) -> str:
    names = {libvirt.VIR_DOMAIN_PAUSED_IOERROR: "a disk error", libvirt.VIR_DOMAIN_PAUSED_NOSPACE: "the host's disk is full",
             libvirt.VIR_DOMAIN_PAUSED_CRASHED: "a crash"}
    return names.get(reason, f"reason {reason}")


def _shutoff_message(reason: int) -> str:
    messages = {
        libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "The lab machine crashed.",
        libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "The lab machine was shut down from inside.",
        libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "The lab machine was switched off.",
        libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "The lab machine failed to start.",
    }
    return messages.get(reason, "The lab machine is switched off.")
