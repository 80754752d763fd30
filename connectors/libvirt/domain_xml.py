"""A lab's libvirt domain definition, as a pure function of a `DomainPlan`, and what LabDesk reads back.

Keeping the XML out of the connector's I/O means every variant (disk or kernel, user-mode NIC or libvirt
network, VNC, SPICE or none, passthrough GPU or vGPU) is checked by defining it on libvirt's test driver,
with no daemon. The tree is built with ElementTree, never by formatting strings, so a value (a path, a
course tag) is always escaped and can never add an element.

The domain is tagged in `<metadata>` with LabDesk's namespace `METADATA_NS`: the lab id, the backend's name
prefix, the course tag, the image, the GPU unit's key and the time the plan was made (`created`, used to
rank concurrent placements: `connectors.libvirt.placement`). Never a learner's identity.

A user-mode NIC is QEMU's own (SLIRP) with `restrict=on`: the guest reaches nothing, and each forward
binds one port on the host's `forward_address` to a guest port. libvirt (9.0) has no port forwards for it,
so it is given as `<qemu:commandline>` arguments, as the tiny-guest example verified.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Mapping

from broker.connector import GpuUnit

METADATA_NS = "https://labdesk.dev/xmlns/libvirt/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
SLIRP_ID = "labdesk0"
VNC_PASSWORD_MAX = 8

ET.register_namespace("labdesk", METADATA_NS)
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class DomainPlan:
    """Everything one lab's domain is made of; `domain_xml` turns it into libvirt's XML.

    A plan boots from `disk_path` (a qcow2 overlay), from `kernel` (+ `initrd`, `cmdline`), or both (the
    kernel wins, the disk is still attached). `forwards` are (host port, guest port) pairs for `network`
    "user"; `network_name` is the libvirt network for `network` "network". `mac` defaults to one derived
    from the lab id (`mac_for`).
    """

    name: str
    lab_id: int
    vcpus: int
    memory_mb: int
    domain_type: str = "kvm"  # "kvm" or "qemu" (TCG)
    machine: str = "q35"  # "q35" or "pc"
    uuid: str | None = None
    disk_path: str | None = None
    seed_path: str | None = None  # a cloud-init NoCloud ISO, attached as a read-only cdrom
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    network: str = "user"  # "user" or "network"
    network_name: str = ""
    forwards: tuple[tuple[int, int], ...] = ()
    forward_address: str = "127.0.0.1"
    mac: str | None = None
    graphics: str = "vnc"  # "vnc", "spice" or "none"
    graphics_listen: str = "127.0.0.1"
    graphics_password: str = ""
    video: str = "virtio"
    console_path: str | None = None  # the serial console, to a file
    gpu: GpuUnit | None = None
    prefix: str = "labdesk"
    course: str = ""
    image: str = ""
    created: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "domain_type": self.domain_type in ("kvm", "qemu"),
            "machine": self.machine in ("q35", "pc"),
            "network": self.network in ("user", "network") and (self.network == "user" or bool(self.network_name)),
            "forwards": self.network == "user" or not self.forwards,
            "graphics": self.graphics in ("vnc", "spice", "none"),
            "graphics_password": self.graphics != "vnc" or len(self.graphics_password) <= VNC_PASSWORD_MAX,
            "initrd": self.kernel is not None or (self.initrd is None and self.cmdline is None),
            "vcpus": self.vcpus >= 1 and self.memory_mb >= 1,
            "gpu": self.gpu is None or self.gpu.kind in ("pci", "mdev"),
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid domain plan for {self.name}: {', '.join(bad)}")


def mac_for(lab_id: int) -> str:
    """A MAC address in QEMU's 52:54:00 range, the same for a lab every time, unique for 2^24 labs."""
    low = lab_id % (1 << 24)
    return "52:54:00:" + ":".join(f"{(low >> shift) & 0xFF:02x}" for shift in (16, 8, 0))


def domain_xml(plan: DomainPlan) -> str:
    """The domain definition of `plan`, ready for `virConnect.defineXML`."""
    domain = ET.Element("domain", type=plan.domain_type)
    _text(domain, "name", plan.name)
    if plan.uuid:
        _text(domain, "uuid", plan.uuid)
    domain.append(_metadata(plan))
    _text(domain, "memory", str(plan.memory_mb), unit="MiB")
    _text(domain, "vcpu", str(plan.vcpus))
    domain.append(_os(plan))
    ET.SubElement(ET.SubElement(domain, "features"), "acpi")
    if plan.domain_type == "kvm":
        ET.SubElement(domain, "cpu", mode="host-passthrough")
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        _text(domain, event, action)
    domain.append(_devices(plan))
    if plan.network == "user":
        domain.append(_slirp(plan))
    return _serialize(domain)


def _metadata(plan: DomainPlan) -> ET.Element:
    metadata = ET.Element("metadata")
    attributes = {"id": str(plan.lab_id), "prefix": plan.prefix, "course": plan.course, "image": plan.image,
                  "created": repr(float(plan.created))}
    if plan.gpu is not None:
        attributes["gpu"] = plan.gpu.key
    ET.SubElement(metadata, f"{{{METADATA_NS}}}lab", attributes)
    return metadata


def _os(plan: DomainPlan) -> ET.Element:
    os_element = ET.Element("os")
    _text(os_element, "type", "hvm", arch="x86_64", machine=plan.machine)
    if plan.kernel:
        _text(os_element, "kernel", plan.kernel)
        if plan.initrd:
            _text(os_element, "initrd", plan.initrd)
        if plan.cmdline:
            _text(os_element, "cmdline", plan.cmdline)
    elif plan.disk_path:
        ET.SubElement(os_element, "boot", dev="hd")
    return os_element


def _devices(plan: DomainPlan) -> ET.Element:
    devices = ET.Element("devices")
    if plan.disk_path:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2", discard="unmap")
        ET.SubElement(disk, "source", file=plan.disk_path)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if plan.seed_path:
        devices.append(_seed_cdrom(plan))
    if plan.network == "network":
        nic = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(nic, "source", network=plan.network_name)
        ET.SubElement(nic, "mac", address=plan.mac or mac_for(plan.lab_id))
        ET.SubElement(nic, "model", type="virtio")
    if plan.console_path:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=plan.console_path)
        ET.SubElement(serial, "target", port="0")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    if plan.graphics != "none":
        devices.append(_graphics(plan))
        video = ET.SubElement(devices, "video")
        ET.SubElement(video, "model", type=plan.video)
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    if plan.gpu is not None:
        devices.append(hostdev(plan.gpu))
    return devices


def _seed_cdrom(plan: DomainPlan) -> ET.Element:
    bus, dev = ("sata", "sda") if plan.machine == "q35" else ("ide", "hdc")
    cdrom = ET.Element("disk", type="file", device="cdrom")
    ET.SubElement(cdrom, "driver", name="qemu", type="raw")
    ET.SubElement(cdrom, "source", file=plan.seed_path or "")
    ET.SubElement(cdrom, "target", dev=dev, bus=bus)
    ET.SubElement(cdrom, "readonly")
    return cdrom


def _graphics(plan: DomainPlan) -> ET.Element:
    graphics = ET.Element("graphics", type=plan.graphics, autoport="yes", listen=plan.graphics_listen)
    if plan.graphics_password:
        graphics.set("passwd", plan.graphics_password)
    ET.SubElement(graphics, "listen", type="address", address=plan.graphics_listen)
    return graphics


def _slirp(plan: DomainPlan) -> ET.Element:
    """The user-mode NIC: `-netdev user,restrict=on,hostfwd=...` and its virtio-net device."""
    netdev = f"user,id={SLIRP_ID},restrict=on" + "".join(
        f",hostfwd=tcp:{plan.forward_address}:{int(host)}-:{int(guest)}" for host, guest in plan.forwards)
    device = f"virtio-net-pci,netdev={SLIRP_ID},mac={plan.mac or mac_for(plan.lab_id)}"
    if plan.machine == "pc":
        device += ",bus=pci.0,addr=0x1e"  # as the tiny-guest example; on q35 QEMU picks a free slot itself
    commandline = ET.Element(f"{{{QEMU_NS}}}commandline")
    for value in ("-netdev", netdev, "-device", device):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)
    return commandline


def hostdev(unit: GpuUnit) -> ET.Element:
    """The `<hostdev>` that gives a domain `unit`: the whole card (VFIO, managed) or a vGPU by its UUID."""
    if unit.kind == "mdev":
        element = ET.Element("hostdev", mode="subsystem", type="mdev", model="vfio-pci")
        ET.SubElement(ET.SubElement(element, "source"), "address", uuid=unit.address)
        return element
    element = ET.Element("hostdev", mode="subsystem", type="pci", managed="yes")
    ET.SubElement(ET.SubElement(element, "source"), "address", pci_address(unit.address))
    return element


def pci_address(address: str) -> dict[str, str]:
    """"0000:41:00.0" as libvirt's address attributes: domain 0x0000, bus 0x41, slot 0x00, function 0x0."""
    try:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        numbers = [int(part, 16) for part in (domain, bus, slot, function)]
    except ValueError:
        raise ValueError(f"not a PCI address (DDDD:BB:SS.F): {address!r}") from None
    return {"domain": f"0x{numbers[0]:04x}", "bus": f"0x{numbers[1]:02x}", "slot": f"0x{numbers[2]:02x}",
            "function": f"0x{numbers[3]:x}"}


# -- reading domains back ------------------------------------------------------------------------------------
def read_ports(live_xml: str) -> dict[str, int]:
    """The console ports QEMU chose (autoport) in a running domain's XML: `{"vnc": 5901}`; none when stopped."""
    ports: dict[str, int] = {}
    for graphics in ET.fromstring(live_xml).iterfind("devices/graphics"):
        port = int(graphics.get("port", "-1"))
        if port > 0:
            ports[graphics.get("type", "")] = port
    return ports


def lab_metadata(xml: str, namespace: str = METADATA_NS) -> Mapping[str, str] | None:
    """LabDesk's metadata attributes of a domain XML, or of the element `virDomain.metadata(ELEMENT, ns)`
    returns (libvirt gives that one as a bare `<lab>`, its namespace chosen by the call)."""
    root = ET.fromstring(xml)
    tag = f"{{{namespace}}}lab"
    element = root if root.tag in (tag, "lab") else root.find(f"metadata/{tag}")
    return dict(element.attrib) if element is not None else None


def lab_id_of(xml: str, namespace: str = METADATA_NS) -> int | None:
    """The lab id a domain is tagged with, or None for a domain that is not a lab of this namespace."""
    metadata = lab_metadata(xml, namespace)
    value = (metadata or {}).get("id", "")
    return int(value) if value.isdigit() else None


def swap_gpu(xml: str, unit: GpuUnit) -> str:
    """`xml` with its GPU hostdev given `unit` instead (a saved lab moving to another GPU).

    The hostdev keeps its guest-side `<address>` and alias, so the guest sees its GPU where it was; the
    metadata's `gpu` key follows. ValueError if the domain holds no GPU.
    """
    root = ET.fromstring(xml)
    old = next((h for h in root.iterfind("devices/hostdev") if h.get("type") in ("pci", "mdev")), None)
    if old is None:
        raise ValueError("the domain has no GPU hostdev to swap")
    new = hostdev(unit)
    kept = [child for child in old if child.tag not in ("source", "driver")]
    old.attrib.clear()
    old.attrib.update(new.attrib)
    for child in list(old):
        old.remove(child)
    old.extend([*new, *kept])
    tag = root.find(f"metadata/{{{METADATA_NS}}}lab")
    if tag is not None:
        tag.set("gpu", unit.key)
    return _serialize(root)


# -- storage volumes ------------------------------------------------------------------------------------------
def overlay_volume_xml(name: str, capacity_gb: int, backing_path: str, backing_format: str = "qcow2") -> str:
    """A qcow2 volume of `capacity_gb` GiB over the base image at `backing_path` (copy-on-write)."""
    volume = ET.Element("volume", type="file")
    _text(volume, "name", name)
    _text(volume, "capacity", str(int(capacity_gb)), unit="GiB")
    ET.SubElement(ET.SubElement(volume, "target"), "format", type="qcow2")
    backing = ET.SubElement(volume, "backingStore")
    _text(backing, "path", backing_path)
    ET.SubElement(backing, "format", type=backing_format)
    return _serialize(volume)


def seed_volume_xml(name: str, size_bytes: int) -> str:
    """A raw volume of `size_bytes` for a cloud-init seed ISO (the connector uploads the bytes into it)."""
    volume = ET.Element("volume", type="file")
    _text(volume, "name", name)
    _text(volume, "capacity", str(int(size_bytes)), unit="bytes")
    ET.SubElement(ET.SubElement(volume, "target"), "format", type="raw")
    return _serialize(volume)


def _text(parent: ET.Element, tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = text
    return element


def _serialize(element: ET.Element) -> str:
    ET.indent(element)
    return ET.tostring(element, encoding="unicode")

