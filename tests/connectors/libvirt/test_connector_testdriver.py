"""The libvirt connector on libvirt's test driver (no daemon): provisioning, placement, GPUs, suspend, delete.

Each `libvirt.open("test:///...")` gets fresh state, so every test makes its own connector (which keeps one
connection per host for its lifetime) and reads the host back through `connector.connection(host)`. The
test driver runs no guest, so its images say `guest_agent = false`: READY means running with a known
endpoint (docs/libvirt.md, "Lifecycle"). What the driver does not enforce (hostdevs, GPU exclusivity, mdev
accounting) is not tested here: see "Tested, and what could not be" there.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed")
import libvirt  # noqa: E402

from broker.connector import Capability, GpuUnit, LabSpec, ObservedState  # noqa: E402
from broker.errors import CapacityError, PermanentError, Unsupported  # noqa: E402
from broker.testing.contract import ConnectorContract  # noqa: E402
from connectors.credentials import derive  # noqa: E402
from connectors.libvirt.connector import LibvirtConnector  # noqa: E402
from tests.connectors.libvirt.conftest import SEED, backend_config, host, host_uri, lab_params  # noqa: E402

_ids = itertools.count(7001)


def spec(params: dict | None = None, gpu: GpuUnit | None = None, protocol: str = "ssh") -> LabSpec:
    return LabSpec(lab_id=next(_ids), image="tiny", owner="learner-1", params=params or lab_params(), protocol=protocol, gpu=gpu)


@pytest.fixture
def rack(tmp_path: Path) -> LibvirtConnector:
    """One host: the GPU rack (8 GPUs, 3 existing vGPUs), 16 vCPUs and 64 GiB for LabDesk."""
    return LibvirtConnector("lv", backend_config(host("rack", host_uri(tmp_path, "rack"))))


def unit(connector: LibvirtConnector, kind: str, model_prefix: str = "") -> GpuUnit:
    return next(u for u in connector.gpu_units() if u.kind == kind and u.model.startswith(model_prefix))


def defined_xml(connector: LibvirtConnector, handle: dict) -> ET.Element:
    domain = connector.connection(handle["host"]).lookupByName(handle["domain"])
    return ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))


def volume_names(connector: LibvirtConnector, host_name: str) -> set[str]:
    pool = connector.connection(host_name).storagePoolLookupByName("default")
    return {volume.name() for volume in pool.listAllVolumes()}


class TestContractOnTheTestDriver(ConnectorContract):
    params = lab_params()
    timeout = 10.0

    @pytest.fixture
    def connector(self, rack: LibvirtConnector) -> LibvirtConnector:
        return rack


def test_provision_becomes_ready_with_a_forwarded_ssh_endpoint_and_derived_credentials(rack: LibvirtConnector) -> None:
    lab = spec()
    handle = rack.provision(lab)
    assert handle["domain"] == f"labdesk-lab-{lab.lab_id}" and handle["host"] == "rack"
    assert rack.observe(handle).state == ObservedState.READY
    [endpoint] = rack.endpoints(handle)
    creds = derive(SEED, lab.lab_id)
    assert (endpoint.protocol, endpoint.host, endpoint.name) == ("ssh", "127.0.0.1", "main")
    assert 43000 <= endpoint.port <= 43999
    assert (endpoint.username, endpoint.password) == ("learner", creds.password)
    assert endpoint.extra["private-key"] == creds.learner_private_key
    root = defined_xml(rack, handle)
    assert root.get("type") == "kvm"
    assert root.find("devices/graphics").get("passwd") == creds.vnc_password  # the console is locked too
    secrets = (creds.password, creds.learner_private_key, creds.password_hash)
    assert not any(secret in repr(handle) for secret in secrets)  # the handle is stored in the clear


def test_the_overlay_is_a_copy_on_write_volume_on_the_base_image(rack: LibvirtConnector) -> None:
    handle = rack.provision(spec())
    pool = rack.connection("rack").storagePoolLookupByName("default")
    overlay = ET.fromstring(pool.storageVolLookupByName(f"{handle['domain']}.qcow2").XMLDesc(0))
    assert overlay.findtext("backingStore/path") == "/var/lib/libvirt/images/base.qcow2"
    assert overlay.find("target/format").get("type") == "qcow2"
    disk = defined_xml(rack, handle).find("devices/disk[@device='disk']/source")
    assert disk.get("file") == f"/var/lib/libvirt/images/{handle['domain']}.qcow2"


def test_kernel_and_initrd_are_volumes_of_the_image_pool(rack: LibvirtConnector) -> None:
    params = lab_params(base_image="", kernel="vmlinuz", initrd="initrd.img", cmdline="console=ttyS0")
    handle = rack.provision(spec(params))
    os_element = defined_xml(rack, handle).find("os")
    assert os_element.findtext("kernel") == "/var/lib/libvirt/images/vmlinuz"
    assert os_element.findtext("initrd") == "/var/lib/libvirt/images/initrd.img"
    assert os_element.findtext("cmdline") == "console=ttyS0"
    assert f"{handle['domain']}.qcow2" not in volume_names(rack, "rack")


def test_provision_is_idempotent(rack: LibvirtConnector) -> None:
    lab = spec()
    first = rack.provision(lab)
    second = rack.provision(lab)
    assert first == second
    assert [m.lab_id for m in rack.list_managed()].count(lab.lab_id) == 1
    assert rack.endpoints(first) == rack.endpoints(second)


def test_two_labs_get_different_forwarded_ports(rack: LibvirtConnector) -> None:
    ports = {rack.endpoint(rack.provision(spec(lab_params(ports=[("ssh", 22), ("rdp", 3389)]), protocol="rdp"))).port for _ in range(3)}
    both = [e for h in [rack.provision(spec(lab_params(ports=[("rdp", 3389), ("ssh", 22)]), protocol="rdp"))] for e in rack.endpoints(h)]
    assert [(e.protocol, e.name) for e in both] == [("rdp", "main"), ("ssh", "main-ssh")]
    assert len(ports | {e.port for e in both}) == 5


def test_list_managed_finds_only_this_installations_labs(tmp_path: Path) -> None:
    uri = host_uri(tmp_path, "shared")
    ours = LibvirtConnector("lv", backend_config(host("h1", uri)))
    lab = spec()
    handle = ours.provision(lab)
    conn = ours.connection("h1")
    conn.defineXML("<domain type='kvm'><name>labdesk-lab-99</name><memory>1024</memory><os><type>hvm</type></os></domain>")
    assert [(m.lab_id, m.handle["domain"]) for m in ours.list_managed()] == [(lab.lab_id, handle["domain"])]


def test_delete_removes_the_domain_and_its_overlay_and_is_repeatable(rack: LibvirtConnector) -> None:
    handle = rack.provision(spec())
    assert f"{handle['domain']}.qcow2" in volume_names(rack, "rack")
    rack.delete(handle)
    assert rack.observe(handle).state == ObservedState.GONE
    assert f"{handle['domain']}.qcow2" not in volume_names(rack, "rack")
    assert rack.list_managed() == []
    rack.delete(handle)


def test_suspend_without_a_gpu_is_a_managed_save(rack: LibvirtConnector) -> None:
    handle = rack.provision(spec())
    rack.suspend(handle)
    domain = rack.connection("rack").lookupByName(handle["domain"])
    assert domain.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF and domain.hasManagedSaveImage(0)
    assert rack.observe(handle).state == ObservedState.SUSPENDED
    rack.suspend(handle)  # twice is fine
    rack.resume(handle)
    assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING and not domain.hasManagedSaveImage(0)
    assert rack.observe(handle).state == ObservedState.READY
    assert rack.keeps_gpu_when_suspended(handle)


def test_a_passthrough_gpu_lab_goes_to_the_units_host_holds_a_hostdev_and_pauses(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("plain", host_uri(tmp_path, "plain")),
                                                      host("gpu", host_uri(tmp_path, "gpu"), gpus={})))
    a100 = next(u for u in connector.gpu_units() if u.kind == "pci" and u.model == "nvidia-a100" and u.host == "gpu")
    handle = connector.provision(spec(lab_params(gpu="nvidia-a100"), gpu=a100))
    assert handle["host"] == "gpu" and handle["suspend_mode"] == "pause"
    [hostdev] = defined_xml(connector, handle).findall("devices/hostdev")
    assert hostdev.get("type") == "pci" and hostdev.get("managed") == "yes"
    bus = int(a100.address.split(":")[1], 16)
    assert int(hostdev.find("source/address").get("bus"), 16) == bus
    connector.suspend(handle)
    domain = connector.connection("gpu").lookupByName(handle["domain"])
    assert domain.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    assert not domain.hasManagedSaveImage(0)
    assert connector.observe(handle).state == ObservedState.SUSPENDED
    assert connector.keeps_gpu_when_suspended(handle)
    connector.resume(handle)
    assert connector.observe(handle).state == ObservedState.READY


def test_a_vgpu_lab_holds_an_mdev_hostdev(rack: LibvirtConnector) -> None:
    vgpu = unit(rack, "mdev")
    handle = rack.provision(spec(lab_params(gpu=vgpu.model), gpu=vgpu))
    [hostdev] = defined_xml(rack, handle).findall("devices/hostdev")
    assert hostdev.get("type") == "mdev" and hostdev.get("model") == "vfio-pci"
    assert hostdev.find("source/address").get("uuid") == vgpu.address
    assert rack.observe(handle).state == ObservedState.READY
    assert handle["mdev_created"] == ""  # it existed: nothing to create, nothing to remove on delete


def test_gpu_on_suspend_release_saves_to_disk_and_lets_the_gpu_go(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("rack", host_uri(tmp_path, "rack"), gpu_save=True), gpu_on_suspend="release"))
    vgpu = unit(connector, "mdev")
    handle = connector.provision(spec(lab_params(gpu=vgpu.model), gpu=vgpu))
    assert handle["suspend_mode"] == "save"
    connector.suspend(handle)
    assert connector.connection("rack").lookupByName(handle["domain"]).hasManagedSaveImage(0)
    assert connector.keeps_gpu_when_suspended(handle) is False
    assert connector.rebind_gpu(handle, vgpu) is handle  # the same unit: nothing to do
    other = next(u for u in connector.gpu_units() if u.kind == "mdev" and u.key != vgpu.key)
    with pytest.raises(Unsupported):  # the test driver cannot rewrite a managed-save image
        connector.rebind_gpu(handle, other)


def test_keep_with_gpu_save_saves_to_disk_but_keeps_the_gpu(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("rack", host_uri(tmp_path, "rack"), gpu_save=True)))
    vgpu = unit(connector, "mdev")
    handle = connector.provision(spec(lab_params(gpu=vgpu.model), gpu=vgpu))
    connector.suspend(handle)
    assert connector.observe(handle).state == ObservedState.SUSPENDED
    assert connector.keeps_gpu_when_suspended(handle) is True


def test_a_gpu_on_another_host_cannot_be_rebound(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("a", host_uri(tmp_path, "a"), gpu_save=True),
                                                      host("b", host_uri(tmp_path, "b"), gpu_save=True), gpu_on_suspend="release"))
    on_a = next(u for u in connector.gpu_units() if u.host == "a" and u.kind == "mdev")
    on_b = next(u for u in connector.gpu_units() if u.host == "b" and u.kind == "mdev")
    handle = connector.provision(spec(lab_params(gpu=on_a.model), gpu=on_a))
    connector.suspend(handle)
    with pytest.raises(Unsupported, match="saved on a"):
        connector.rebind_gpu(handle, on_b)


def test_gpu_units_come_from_every_hosts_node_devices(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("a", host_uri(tmp_path, "a")),
                                                      host("b", host_uri(tmp_path, "b", source="gpu-host.xml"))))
    units = connector.gpu_units()
    assert {u.host for u in units} == {"a", "b"}
    assert "b/pci_0000_41_00_0" in {u.key for u in units}
    assert "b/4b20d080-1b54-4048-85b3-a6a62d165c01" in {u.key for u in units}
    assert Capability.GPU in connector.capabilities and Capability.SUSPEND in connector.capabilities


def test_placement_fills_the_roomiest_host_then_says_full(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("a", host_uri(tmp_path, "a"), vcpus=4, memory_mb=4096),
                                                      host("b", host_uri(tmp_path, "b"), vcpus=6, memory_mb=6144)))
    sized = lab_params(vcpu=2, ram_mb=2048)
    placed = [connector.provision(spec(sized))["host"] for _ in range(5)]
    assert sorted(placed) == ["a", "a", "b", "b", "b"]
    assert placed[0] == "b"  # the most memory left after placing
    with pytest.raises(CapacityError) as caught:
        connector.provision(spec(sized))
    assert "free" in caught.value.user_message


def test_a_gpu_lab_waits_for_room_on_its_units_host(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("a", host_uri(tmp_path, "a"), vcpus=2, memory_mb=2048),
                                                      host("b", host_uri(tmp_path, "b"))))
    on_a = next(u for u in connector.gpu_units() if u.host == "a" and u.kind == "pci")
    connector.provision(spec(lab_params(vcpu=2, ram_mb=2048), gpu=on_a))
    with pytest.raises(CapacityError):  # b has room, but the GPU is on a
        connector.provision(spec(lab_params(vcpu=1, ram_mb=1024), gpu=on_a))


def test_an_unknown_base_image_is_a_permanent_error_naming_it(rack: LibvirtConnector) -> None:
    with pytest.raises(PermanentError) as caught:
        rack.provision(spec(lab_params(base_image="no-such.qcow2")))
    assert "no-such.qcow2" in str(caught.value) and "default" in str(caught.value)
    assert "instructor" in caught.value.user_message
    assert rack.list_managed() == []


def test_a_refused_vgpu_creation_is_a_clear_permanent_error(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("rack", host_uri(tmp_path, "rack"), create_mdevs=True)))
    existing = {u.address for u in LibvirtConnector("x", backend_config(host("rack", host_uri(tmp_path, "plain")))).gpu_units()}
    new = next(u for u in connector.gpu_units() if u.kind == "mdev" and u.address not in existing)
    with pytest.raises(PermanentError) as caught:
        connector.provision(spec(lab_params(gpu=new.model), gpu=new))
    assert f"could not create vGPU {new.address}" in str(caught.value)
    assert "fibre channel" in str(caught.value)  # libvirt's own words stay in the log message
    assert "GPU" in caught.value.user_message


def test_cloud_init_needs_an_upload_the_test_driver_lacks(rack: LibvirtConnector) -> None:
    lab = spec(lab_params(cloud_init=True))
    with pytest.raises(PermanentError, match="cannot upload a cloud-init seed"):
        rack.provision(lab)
    assert not any(name.startswith(f"labdesk-lab-{lab.lab_id}") for name in volume_names(rack, "rack"))  # no overlay left


def test_an_unreachable_host_is_transient(tmp_path: Path) -> None:
    from broker.errors import TransientError

    connector = LibvirtConnector("lv", backend_config(host("gone", f"qemu+tls://{'no-such-host.invalid'}/system")))
    with pytest.raises(TransientError) as caught:
        connector.provision(spec())
    assert caught.value.user_message == "The lab host is not answering; retrying."
    assert connector.available() is False


def test_check_targets_name_the_guest_agent(rack: LibvirtConnector) -> None:
    with_agent = rack.provision(spec(lab_params(guest_agent=True)))
    [target] = rack.check_targets(with_agent)
    assert target.runner == "guest_agent"
    assert dict(target.extra) == {"uri": rack.settings.host("rack").uri, "domain": with_agent["domain"]}
    with pytest.raises(Unsupported):
        rack.check_targets(rack.provision(spec()))


def test_an_agent_image_stays_pending_while_the_agent_is_silent(rack: LibvirtConnector) -> None:
    handle = rack.provision(spec(lab_params(guest_agent=True)))
    seen = rack.observe(handle)
    assert seen.state == ObservedState.PENDING and "starting" in seen.message


def test_a_domain_switched_off_from_outside_is_an_error(rack: LibvirtConnector) -> None:
    handle = rack.provision(spec())
    rack.connection("rack").lookupByName(handle["domain"]).destroy()
    seen = rack.observe(handle)
    assert seen.state == ObservedState.ERROR and "switched off" in seen.message
