"""Domain and volume XML: each variant is defined on libvirt's test driver and its structure asserted."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import libvirt
import pytest

from broker.connector import GpuUnit
from connectors.libvirt.domain_xml import (
    METADATA_NS, QEMU_NS, DomainPlan, domain_xml, lab_id_of, lab_metadata, mac_for, overlay_volume_xml, read_ports,
    seed_volume_xml, swap_gpu,
)
from tests.connectors.libvirt import open_host

A100 = GpuUnit("gpu1/pci_0000_41_00_0", "gpu1", "nvidia-a100", "pci", "0000:41:00.0", "", "pci_0000_41_00_0")
T4_1B = GpuUnit("gpu1/4b20d080-1b54-4048-85b3-a6a62d165c01", "gpu1", "nvidia-t4-1b", "mdev",
                "4b20d080-1b54-4048-85b3-a6a62d165c01", "nvidia-222", "pci_0000_81_00_0")
LAB = "{%s}lab" % METADATA_NS
Q = "{%s}" % QEMU_NS


@pytest.fixture
def conn() -> Iterator[Any]:
    connection = open_host("gpu-host.xml")
    yield connection
    connection.close()


def plan(**changes: Any) -> DomainPlan:
    base = DomainPlan(name="labdesk-lab-42", lab_id=42, vcpus=2, memory_mb=2048, disk_path="/var/lib/libvirt/images/labdesk-lab-42.qcow2",
                      seed_path="/var/lib/libvirt/images/labdesk-lab-42-seed.iso", forwards=((42001, 22), (42002, 3389)),
                      graphics_password="Ab3dEf7h", prefix="labdesk", course="course-3", image="debian-desktop",
                      created=1700000000.25)
    return dataclasses.replace(base, **changes)


def define(conn: Any, xml: str) -> ET.Element:
    """Define `xml` on the test driver, start it, and return the parsed XML as libvirt keeps it."""
    domain = conn.defineXML(xml)
    domain.create()
    return ET.fromstring(domain.XMLDesc())


def test_a_disk_lab_with_seed_user_nic_and_vnc(conn: Any) -> None:
    xml = domain_xml(plan())
    root = ET.fromstring(xml)
    assert root.get("type") == "kvm" and root.findtext("name") == "labdesk-lab-42"
    assert (root.findtext("memory"), root.find("memory").get("unit"), root.findtext("vcpu")) == ("2048", "MiB", "2")
    assert root.find("os/type").attrib == {"arch": "x86_64", "machine": "q35"} and root.find("os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None and root.find("features/acpi") is not None
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert (root.findtext("on_poweroff"), root.findtext("on_reboot")) == ("destroy", "restart")
    disk, cdrom = root.findall("devices/disk")
    assert (disk.get("device"), disk.find("driver").get("type"), disk.find("target").attrib) == (
        "disk", "qcow2", {"dev": "vda", "bus": "virtio"})
    assert disk.find("source").get("file") == "/var/lib/libvirt/images/labdesk-lab-42.qcow2"
    assert (cdrom.get("device"), cdrom.find("driver").get("type"), cdrom.find("readonly") is not None) == ("cdrom", "raw", True)
    assert cdrom.find("target").attrib == {"dev": "sda", "bus": "sata"}
    assert root.find("devices/channel/target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}
    assert root.find("devices/rng").get("model") == "virtio" and root.findtext("devices/rng/backend") == "/dev/urandom"
    graphics = root.find("devices/graphics")
    assert graphics.attrib == {"type": "vnc", "autoport": "yes", "listen": "127.0.0.1", "passwd": "Ab3dEf7h"}
    assert root.find("devices/video/model").get("type") == "virtio"
    assert root.find("devices/interface") is None and root.find("devices/hostdev") is None
    args = [arg.get("value") for arg in root.iterfind(f"{Q}commandline/{Q}arg")]
    assert args == ["-netdev", "user,id=labdesk0,restrict=on,hostfwd=tcp:127.0.0.1:42001-:22,hostfwd=tcp:127.0.0.1:42002-:3389",
                    "-device", "virtio-net-pci,netdev=labdesk0,mac=52:54:00:00:00:2a"]
    live = define(conn, xml)  # the test driver keeps no <qemu:commandline>: the qemu driver does
    assert live.find("devices/graphics").get("type") == "vnc"


def test_the_metadata_tags_the_lab_and_never_a_learner(conn: Any) -> None:
    xml = domain_xml(plan(gpu=A100))
    tag = ET.fromstring(xml).find(f"metadata/{LAB}")
    assert tag.attrib == {"id": "42", "prefix": "labdesk", "course": "course-3", "image": "debian-desktop",
                          "created": "1700000000.25", "gpu": "gpu1/pci_0000_41_00_0"}
    domain = conn.defineXML(xml)
    element = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
    assert lab_id_of(element) == 42 and lab_id_of(domain.XMLDesc()) == 42
    assert lab_metadata(element)["created"] == "1700000000.25"
    assert lab_id_of(domain.XMLDesc(), "https://other.example/ns") is None


def test_a_domain_without_labdesk_metadata_is_no_lab() -> None:
    assert lab_id_of("<domain type='kvm'><name>other</name></domain>") is None
    assert lab_id_of(f"<domain><metadata><x:lab xmlns:x='{METADATA_NS}' id='nope'/></metadata></domain>") is None


def test_values_are_escaped_never_markup(conn: Any) -> None:
    course = "c<3 & \"quotes\" '/><evil/>"
    root = define(conn, domain_xml(plan(course=course, disk_path="/pool/a&b<c>.qcow2")))
    assert root.find(f"metadata/{LAB}").get("course") == course
    assert root.find("devices/disk/source").get("file") == "/pool/a&b<c>.qcow2"
    assert root.find(".//evil") is None


def test_a_kernel_only_tcg_lab_like_the_tiny_guest(conn: Any) -> None:
    xml = domain_xml(plan(domain_type="qemu", machine="pc", disk_path=None, seed_path=None, kernel="/g/vmlinuz",
                          initrd="/g/initrd.img", cmdline="console=ttyS0 panic=-1", graphics="none", forwards=((2201, 22),),
                          mac="52:54:00:ab:cd:99", console_path="/tmp/console.log"))
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.find("cpu") is None
    assert (root.findtext("os/kernel"), root.findtext("os/initrd"), root.findtext("os/cmdline")) == (
        "/g/vmlinuz", "/g/initrd.img", "console=ttyS0 panic=-1")
    assert root.find("os/boot") is None and root.find("devices/disk") is None
    assert root.find("devices/graphics") is None and root.find("devices/video") is None
    assert root.find("devices/serial/source").get("path") == "/tmp/console.log"
    args = [arg.get("value") for arg in root.iterfind(f"{Q}commandline/{Q}arg")]
    assert args[1] == "user,id=labdesk0,restrict=on,hostfwd=tcp:127.0.0.1:2201-:22"
    assert args[3] == "virtio-net-pci,netdev=labdesk0,mac=52:54:00:ab:cd:99,bus=pci.0,addr=0x1e"
    define(conn, xml)


def test_a_disk_and_kernel_lab_boots_the_kernel_with_the_disk_attached(conn: Any) -> None:
    xml = domain_xml(plan(kernel="/g/vmlinuz", machine="pc"))
    assert ET.fromstring(xml).find("os/boot") is None
    root = define(conn, xml)
    assert root.findtext("os/kernel") == "/g/vmlinuz"
    assert [disk.find("target").get("bus") for disk in root.iterfind("devices/disk")] == ["virtio", "ide"]


def test_a_libvirt_network_nic(conn: Any) -> None:
    xml = domain_xml(plan(network="network", network_name="default", forwards=()))
    root = ET.fromstring(xml)
    nic = root.find("devices/interface")
    assert nic.get("type") == "network" and nic.find("source").get("network") == "default"
    assert nic.find("mac").get("address") == mac_for(42) and nic.find("model").get("type") == "virtio"
    assert root.find(f"{Q}commandline") is None
    assert define(conn, xml).find("devices/interface/source").get("network") == "default"


def test_spice_graphics_with_a_longer_password(conn: Any) -> None:
    xml = domain_xml(plan(graphics="spice", graphics_password="a-long-spice-password", video="qxl", graphics_listen="0.0.0.0"))
    graphics = define(conn, xml).find("devices/graphics")
    assert (graphics.get("type"), graphics.get("autoport"), graphics.get("listen")) == ("spice", "yes", "0.0.0.0")
    assert ET.fromstring(xml).find("devices/video/model").get("type") == "qxl"


def test_a_passthrough_gpu(conn: Any) -> None:
    xml = domain_xml(plan(gpu=A100))
    hostdev = ET.fromstring(xml).find("devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    assert hostdev.find("source/address").attrib == {"domain": "0x0000", "bus": "0x41", "slot": "0x00", "function": "0x0"}
    live = define(conn, xml).find("devices/hostdev/source/address")
    assert (live.get("bus"), live.get("slot"), live.get("function")) == ("0x41", "0x00", "0x0")


def test_a_vgpu(conn: Any) -> None:
    xml = domain_xml(plan(gpu=T4_1B))
    hostdev = ET.fromstring(xml).find("devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "mdev", "model": "vfio-pci"}
    assert hostdev.find("source/address").attrib == {"uuid": T4_1B.address}
    assert define(conn, xml).find("devices/hostdev/source/address").get("uuid") == T4_1B.address


def test_a_uuid_is_kept(conn: Any) -> None:
    fixed = "5f0e7c3a-0000-4000-8000-00000000002a"
    assert define(conn, domain_xml(plan(uuid=fixed))).findtext("uuid") == fixed


@pytest.mark.parametrize("changes", [
    {"domain_type": "xen"}, {"machine": "virt"}, {"network": "bridge"}, {"network": "network"},
    {"network": "network", "network_name": "default"},  # forwards need the user-mode NIC
    {"graphics": "rdp"}, {"graphics_password": "123456789"}, {"kernel": None, "initrd": "/g/initrd"},
    {"cmdline": "quiet"}, {"vcpus": 0},
])
def test_an_impossible_plan_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^invalid domain plan for labdesk-lab-42: "):
        plan(**changes)


def test_mac_addresses_follow_the_lab_id() -> None:
    assert (mac_for(1), mac_for(0xABCDEF), mac_for(0x1000001)) == ("52:54:00:00:00:01", "52:54:00:ab:cd:ef", "52:54:00:00:00:01")


def test_read_ports_of_a_running_domain(conn: Any) -> None:
    assert read_ports(domain_xml(plan())) == {}  # autoport: no port before QEMU runs
    live = ("<domain><devices><graphics type='vnc' port='5901' autoport='yes'/>"
            "<graphics type='spice' port='5902' tlsPort='-1'/></devices></domain>")
    assert read_ports(live) == {"vnc": 5901, "spice": 5902}
    domain = conn.defineXML(domain_xml(plan()))
    domain.create()
    assert set(read_ports(domain.XMLDesc())) <= {"vnc"}  # the test driver may or may not assign one


def test_swap_gpu_moves_a_lab_to_another_card_keeping_the_guest_address(conn: Any) -> None:
    other = dataclasses.replace(A100, key="gpu1/pci_0000_81_00_0", address="0000:81:00.0", parent="pci_0000_81_00_0")
    defined = conn.defineXML(domain_xml(plan(gpu=A100))).XMLDesc()
    guest_address = ET.fromstring(defined).find("devices/hostdev/address")
    swapped = swap_gpu(defined, other)
    root = ET.fromstring(swapped)
    hostdevs = root.findall("devices/hostdev")
    assert len(hostdevs) == 1 and hostdevs[0].find("source/address").get("bus") == "0x81"
    if guest_address is not None:
        assert hostdevs[0].find("address").attrib == guest_address.attrib
    assert root.find(f"metadata/{LAB}").get("gpu") == "gpu1/pci_0000_81_00_0"
    assert lab_id_of(swapped) == 42
    assert conn.defineXML(swapped).XMLDesc().count("bus='0x81'") >= 1


def test_swap_gpu_between_a_card_and_a_vgpu(conn: Any) -> None:
    to_vgpu = swap_gpu(domain_xml(plan(gpu=A100)), T4_1B)
    hostdev = ET.fromstring(to_vgpu).find("devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "mdev", "model": "vfio-pci"}
    assert hostdev.find("source/address").attrib == {"uuid": T4_1B.address}
    back = ET.fromstring(swap_gpu(to_vgpu, A100)).find("devices/hostdev")
    assert back.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    conn.defineXML(to_vgpu)


def test_swap_gpu_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match="no GPU hostdev"):
        swap_gpu(domain_xml(plan()), A100)


def test_overlay_and_seed_volumes_on_the_test_pool(conn: Any) -> None:
    pool = conn.storagePoolLookupByName("default")
    base = pool.createXML(
        "<volume><name>debian.qcow2</name><capacity unit='GiB'>4</capacity><target><format type='qcow2'/></target></volume>")
    xml = overlay_volume_xml("labdesk-lab-42.qcow2", 20, base.path())
    root = ET.fromstring(xml)
    assert (root.findtext("name"), root.findtext("capacity"), root.find("capacity").get("unit")) == (
        "labdesk-lab-42.qcow2", "20", "GiB")
    assert root.find("target/format").get("type") == "qcow2"
    assert (root.findtext("backingStore/path"), root.find("backingStore/format").get("type")) == (base.path(), "qcow2")
    overlay = pool.createXML(xml)
    assert overlay.info()[1] == 20 * 1024**3
    seed = ET.fromstring(seed_volume_xml("labdesk-lab-42-seed.iso", 368640))
    assert (seed.findtext("capacity"), seed.find("capacity").get("unit"), seed.find("target/format").get("type")) == (
        "368640", "bytes", "raw")
    assert pool.createXML(seed_volume_xml("labdesk-lab-42-seed.iso", 368640)).info()[1] == 368640


SCHEMAS = Path("/usr/share/libvirt/schemas")
VARIANTS = {
    "disk, seed, user NIC, vnc": {},
    "passthrough GPU": {"gpu": A100},
    "vGPU, spice": {"gpu": T4_1B, "graphics": "spice"},
    "libvirt network": {"network": "network", "network_name": "default", "forwards": ()},
    "kernel only, TCG, no graphics": {"domain_type": "qemu", "machine": "pc", "disk_path": None, "seed_path": None,
                                      "kernel": "/g/vmlinuz", "initrd": "/g/initrd.img", "cmdline": "console=ttyS0",
                                      "graphics": "none", "console_path": "/tmp/console.log"},
}


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_every_variant_is_valid_for_libvirts_own_schema(variant: str) -> None:
    """The test driver ignores what only the QEMU driver reads (`<qemu:commandline>`); the schema checks it too."""
    etree = pytest.importorskip("lxml.etree")
    if not (SCHEMAS / "domain.rng").is_file():
        pytest.skip(f"libvirt's RelaxNG schemas are not installed in {SCHEMAS}")
    domain_schema = etree.RelaxNG(etree.parse(str(SCHEMAS / "domain.rng")))
    volume_schema = etree.RelaxNG(etree.parse(str(SCHEMAS / "storagevol.rng")))
    the_plan = plan(**VARIANTS[variant])
    xml = domain_xml(the_plan)
    documents = [(domain_schema, xml), (volume_schema, overlay_volume_xml("a.qcow2", 10, "/pool/base.qcow2")),
                 (volume_schema, seed_volume_xml("a-seed.iso", 2048))]
    if the_plan.gpu is not None:
        documents.append((domain_schema, swap_gpu(xml, T4_1B if the_plan.gpu == A100 else A100)))
    for schema, document in documents:
        assert schema.validate(etree.fromstring(document.encode())), schema.error_log
