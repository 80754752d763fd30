"""GPU units from node devices: test-driver hosts opened for real, then the naming rules, modes and errors."""

from __future__ import annotations

import uuid

import pytest

from broker.connector import GpuUnit
from broker.errors import ConfigError
from connectors.libvirt.inventory import MDEV_NAMESPACE, gpu_units, short_name
from tests.connectors.libvirt import device_xmls, open_host

T4_MDEV = "4b20d080-1b54-4048-85b3-a6a62d165c01"
RACK_MDEVS = ("0b7c2f6e-4d1a-4e0b-9c3e-2a1f5d6e7a01", "5e1d9a3c-7b2f-4c8d-a0e1-3f4b5c6d7e02", "a3f0c1d2-9e8b-4a7c-b6d5-e4f3a2b1c003")


@pytest.fixture(scope="module")
def gpu_host() -> list[str]:
    return device_xmls(open_host("gpu-host.xml"))


@pytest.fixture(scope="module")
def gpu_rack() -> list[str]:
    return device_xmls(open_host("gpu-rack.xml"))


def pci(host: str, device: str, model: str, address: str) -> GpuUnit:
    return GpuUnit(f"{host}/{device}", host, model, "pci", address, "", device)


def vgpu(host: str, mdev: str, model: str, parent: str, mdev_type: str = "nvidia-222") -> GpuUnit:
    return GpuUnit(f"{host}/{mdev}", host, model, "mdev", mdev, mdev_type, parent)


def test_gpu_host_has_a_passthrough_a100_and_one_t4_vgpu(gpu_host: list[str]) -> None:
    assert gpu_units("gpu1", gpu_host) == [
        pci("gpu1", "pci_0000_41_00_0", "nvidia-a100", "0000:41:00.0"),
        vgpu("gpu1", T4_MDEV, "nvidia-t4-1b", "pci_0000_81_00_0"),
    ]


def test_gpu_rack_has_every_gpu_and_nothing_else(gpu_rack: list[str]) -> None:
    assert gpu_units("rack", gpu_rack) == [
        pci("rack", "pci_0000_03_00_0", "intel-a770", "0000:03:00.0"),
        pci("rack", "pci_0000_17_00_0", "nvidia-a100", "0000:17:00.0"),
        pci("rack", "pci_0000_31_00_0", "nvidia-a100", "0000:31:00.0"),
        pci("rack", "pci_0000_4b_00_0", "nvidia-l40s", "0000:4b:00.0"),
        pci("rack", "pci_0000_65_00_0", "nvidia-a6000", "0000:65:00.0"),
        *(vgpu("rack", mdev, "nvidia-t4-1b", "pci_0000_ca_00_0") for mdev in RACK_MDEVS),
        pci("rack", "pci_0000_e3_00_0", "amd-mi100", "0000:e3:00.0"),
        pci("rack", "pci_0001_02_00_0", "nvidia-h100", "0001:02:00.0"),
    ]


def test_the_nic_the_audio_function_and_a_foreign_vga_are_not_gpus(gpu_rack: list[str]) -> None:
    parents = {unit.parent for unit in gpu_units("rack", gpu_rack)}
    assert not parents & {"pci_0000_18_00_0", "pci_0000_65_00_1", "pci_0000_02_00_0"}
    assert len(parents) == 8


def test_keys_are_stable_across_inventories_and_connections(gpu_rack: list[str]) -> None:
    again = device_xmls(open_host("gpu-rack.xml"))
    assert [u.key for u in gpu_units("rack", again)] == [u.key for u in gpu_units("rack", list(reversed(gpu_rack)))]


def test_off_takes_a_gpu_away(gpu_host: list[str]) -> None:
    overrides = {"pci_0000_41_00_0": {"mode": "off"}, "pci_0000_81_00_0": {"mode": "off"}}
    assert gpu_units("gpu1", gpu_host, overrides) == []


def test_the_model_override_wins(gpu_host: list[str]) -> None:
    overrides = {"pci_0000_41_00_0": {"model": "nvidia-a100-40g"}, "pci_0000_81_00_0": {"model": "t4-small"}}
    assert [unit.model for unit in gpu_units("gpu1", gpu_host, overrides)] == ["nvidia-a100-40g", "t4-small"]


def test_pci_on_a_card_that_has_vgpus_is_refused(gpu_host: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        gpu_units("gpu1", gpu_host, {"pci_0000_81_00_0": {"mode": "pci"}})
    assert str(caught.value) == (
        f"libvirt host gpu1: gpus.pci_0000_81_00_0.mode: pci, but the card has vGPU instances ({T4_MDEV}); "
        "set gpus.pci_0000_81_00_0.mode = mdev or off, or remove them"
    )


def test_an_override_for_a_device_that_is_no_gpu_is_refused(gpu_rack: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        gpu_units("rack", gpu_rack, {"pci_0000_18_00_0": {"mode": "pci"}})
    assert str(caught.value).startswith("libvirt host rack: gpus.pci_0000_18_00_0: no such GPU on the host (GPUs: pci_0000_03_00_0, ")


def test_an_mdev_type_the_card_does_not_offer_is_refused(gpu_host: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        gpu_units("gpu1", gpu_host, {"pci_0000_41_00_0": {"mode": "mdev", "mdev_type": "nvidia-222"}})
    assert str(caught.value) == "libvirt host gpu1: gpus.pci_0000_41_00_0.mdev_type: the card offers no type 'nvidia-222' (offers: none)"


def test_create_mdevs_offers_the_available_instances_under_stable_uuids(gpu_host: list[str]) -> None:
    overrides = {"pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia-222"}}
    units = gpu_units("gpu1", gpu_host, overrides, create_mdevs=True)
    t4 = [unit for unit in units if unit.parent == "pci_0000_81_00_0"]
    assert len(t4) == 16 and t4[0] == vgpu("gpu1", T4_MDEV, "nvidia-t4-1b", "pci_0000_81_00_0")
    expected = [str(uuid.uuid5(MDEV_NAMESPACE, f"gpu1/pci_0000_81_00_0/nvidia-222/{i}")) for i in range(15)]
    assert [unit.address for unit in t4[1:]] == expected
    assert all(unit.key == f"gpu1/{unit.address}" and unit.model == "nvidia-t4-1b" for unit in t4)
    assert gpu_units("gpu1", gpu_host, overrides, create_mdevs=True) == units


def test_a_created_mdev_keeps_its_key(gpu_host: list[str]) -> None:
    """After the connector creates the first planned mdev the card shows it and one fewer available: same keys."""
    overrides = {"pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia-222"}}
    before = gpu_units("gpu1", gpu_host, overrides, create_mdevs=True)
    created = before[2].address  # the first planned one (after the A100 and the existing mdev)
    after_xmls = [xml.replace("<availableInstances>15<", "<availableInstances>14<") for xml in gpu_host] + [
        MDEV_XML.format(uuid=created, parent="pci_0000_81_00_0", type="nvidia-222")]
    assert sorted(u.key for u in gpu_units("gpu1", after_xmls, overrides, create_mdevs=True)) == sorted(u.key for u in before)


def test_without_a_type_override_mdevs_are_created_of_the_existing_type(gpu_rack: list[str]) -> None:
    t4 = [u for u in gpu_units("rack", gpu_rack, create_mdevs=True) if u.parent == "pci_0000_ca_00_0"]
    assert len(t4) == 3 + 13 and {u.mdev_type for u in t4} == {"nvidia-222"}


def test_another_vgpu_type_on_request(gpu_host: list[str]) -> None:
    overrides = {"pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia-230"}}
    assert [u for u in gpu_units("gpu1", gpu_host, overrides) if u.kind == "mdev"] == []  # the existing mdev is a 222
    created = [u for u in gpu_units("gpu1", gpu_host, overrides, create_mdevs=True) if u.kind == "mdev"]
    assert [(u.model, u.mdev_type) for u in created] == [("nvidia-t4-16q", "nvidia-230")]


def test_mdev_mode_on_a_card_without_mdevs_yet(gpu_host: list[str]) -> None:
    overrides = {"pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia-222"}}
    without = [xml for xml in gpu_host if "<capability type='mdev'>" not in xml]
    assert [u for u in gpu_units("gpu1", without, overrides) if u.kind == "mdev"] == []
    assert len([u for u in gpu_units("gpu1", without, overrides, create_mdevs=True) if u.kind == "mdev"]) == 15


MDEV_XML = """<device>
  <name>mdev_x</name>
  <path>/sys/devices/pci0000:80/0000:80:01.1/0000:81:00.0/{uuid}</path>
  <parent>{parent}</parent>
  <capability type='mdev'><type id='{type}'/><iommuGroup number='9'/></capability>
</device>"""

CARD_XML = """<device><name>pci_0000_0a_00_0</name><parent>computer</parent>
  <capability type='pci'><class>{klass}</class><domain>0x0</domain><bus>0xa</bus><slot>0x0</slot><function>0x0</function>
  <product id='0x1234'>{product}</product><vendor id='{vendor}'>V</vendor></capability></device>"""


def test_an_mdev_without_a_uuid_element_is_read_from_its_path() -> None:
    xmls = [CARD_XML.format(klass="0x030200", product="TU104GL [Tesla T4]", vendor="0x10de"),
            MDEV_XML.format(uuid="AAAAAAAA-1b54-4048-85b3-a6a62d165c01", parent="pci_0000_0a_00_0", type="nvidia-222")]
    assert gpu_units("h", xmls) == [
        vgpu("h", "aaaaaaaa-1b54-4048-85b3-a6a62d165c01", "nvidia-t4-nvidia-222", "pci_0000_0a_00_0")]


@pytest.mark.parametrize(("klass", "vendor", "model"), [
    ("0x030000", "0x10de", "nvidia-t4"),  # VGA
    ("0x030200", "0x1002", "amd-t4"),  # 3D
    ("0x038000", "0x8086", "intel-t4"),  # display, other
    ("0x030001", "0x10de", "nvidia-t4"),  # a programming interface byte
    ("0x040300", "0x10de", None),  # audio
    ("0x020000", "0x8086", None),  # ethernet
    ("0x030000", "0x1a03", None),  # ASPEED
])
def test_what_counts_as_a_gpu(klass: str, vendor: str, model: str | None) -> None:
    units = gpu_units("h", [CARD_XML.format(klass=klass, product="TU104GL [Tesla T4]", vendor=vendor)])
    assert [unit.model for unit in units] == ([model] if model else [])
    assert all(unit.address == "0000:0a:00.0" for unit in units)


@pytest.mark.parametrize(("product", "short"), [
    ("GA100 [A100 SXM4 40GB]", "a100"),
    ("TU104GL [Tesla T4]", "t4"),
    ("GA102GL [RTX A6000]", "a6000"),
    ("AD102 [GeForce RTX 4090]", "4090"),
    ("GP104GL [Quadro P4000]", "p4000"),
    ("Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]", "6800"),
    ("Arcturus GL-XL [Instinct MI100]", "mi100"),
    ("Vega 10 [Radeon Instinct MI25]", "mi25"),
    ("DG2 [Arc A770]", "a770"),
    ("Alder Lake-P GT2 [Iris Xe Graphics]", "xe"),
    ("CoffeeLake-S GT2 [UHD Graphics 630]", "630"),
    ("Tesla V100-PCIE-16GB", "v100-pcie-16gb"),
    ("GA100", "ga100"),
    ("[Tesla]", "tesla"),
    ("", "20b0"),
])
def test_short_names(product: str, short: str) -> None:
    assert short_name(product, 0x20B0) == short


def test_models_stay_catalogue_names() -> None:
    long = "X" * 100
    xmls = [CARD_XML.format(klass="0x030200", product=f"[{long}]", vendor="0x10de")]
    model = gpu_units("h", xmls)[0].model
    assert model == ("nvidia-" + "x" * 100)[:64] and len(model) == 64
