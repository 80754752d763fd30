"""A libvirt host's GPU units, read from its node device XML (`virConnect.listAllDevices()`).

The broker hands GPUs out one unit per lab and never twice (`broker.connector.GpuUnit`), so the inventory
must name every unit the same way each time it is taken: a whole card by its node device, a vGPU by its
mdev UUID. This module is the pure half of that: it gets the XML of every node device and returns units;
the connector does the listing. The XML comes from the administrator's own libvirt host, which LabDesk
already trusts with its labs, so the standard library's ElementTree reads it (no defusedxml).

What counts as a GPU: a PCI device of class 0x03xxxx (display controller: VGA 0x0300, 3D 0x0302, other
0x0380) from NVIDIA (0x10de), AMD (0x1002) or Intel (0x8086). Everything else (NICs, disks) is ignored.

Model names are what catalogue entries ask for (`resources.gpu = "nvidia-t4"`): the vendor's slug, a dash,
and the product's short name. The short name is the text inside the product's last `[...]` (else the whole
product), without the leading marketing words (Tesla, GeForce, Quadro, RTX, GTX, Radeon, Instinct, Pro,
RX, FirePro, Arc, Iris, Data Center GPU, ...) as long as a word follows them; its first word (up to a `/`),
lower-cased: "GA100 [A100 SXM4 40GB]" -> "nvidia-a100", "TU104GL [Tesla T4]" -> "nvidia-t4",
"Arcturus GL-XL [Instinct MI100]" -> "amd-mi100", "DG2 [Arc A770]" -> "intel-a770". A vGPU's model is its
card's model, a dash, and the mdev type's name slugged without the vendor's words and the card's short name:
"GRID T4-1B" on a T4 -> "nvidia-t4-1b". A host's `gpus.<device>.model` override replaces either.

Each card is used one way (`mode`): `pci` passes the whole card; `mdev` offers its vGPUs (mediated
devices) of one type; `off` keeps it from labs. Without an override, a card that already has mdevs is in
`mdev` mode, any other in `pci` mode. With `create_mdevs`, a card in `mdev` mode also offers the
`availableInstances` vGPUs it could still create, under UUIDs derived from the host, card, type and an
index (uuid5), so their keys are the same in every inventory, before and after the connector creates them.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Mapping

from broker.connector import GpuUnit
from broker.errors import ConfigError

VENDORS = {0x10DE: "nvidia", 0x1002: "amd", 0x8086: "intel"}
DISPLAY_CLASS = 0x03
MARKETING = (
    "nvidia", "amd", "ati", "intel", "grid", "tesla", "geforce", "quadro", "titan", "rtx", "gtx", "radeon",
    "instinct", "pro", "rx", "firepro", "arc", "iris", "uhd", "hd", "data", "center", "gpu", "graphics",
)
# A namespace of our own for the UUIDs of mdevs LabDesk may create (uuid5 over host/card/type/index).
MDEV_NAMESPACE = uuid.UUID("7c1f4a52-2d0b-5c8e-9a63-6f1d2b9e4c10")
MAX_MODEL = 64


@dataclass(frozen=True)
class MdevType:
    """One vGPU type a card offers: its id ("nvidia-222"), name ("GRID T4-1B") and how many more fit."""

    id: str
    name: str
    available: int


@dataclass(frozen=True)
class Mdev:
    """An existing mediated device: its UUID, type id and the node device of its card."""

    uuid: str
    type: str
    parent: str


@dataclass(frozen=True)
class Card:
    """A GPU found among the node devices."""

    name: str  # the node device name, "pci_0000_41_00_0"
    address: str  # "0000:41:00.0"
    model: str  # "nvidia-a100"
    short: str  # the product's short name, "a100"
    types: tuple[MdevType, ...]


def gpu_units(host: str, device_xmls: Iterable[str], overrides: Mapping[str, Mapping[str, str]] | None = None,
              create_mdevs: bool = False) -> list[GpuUnit]:
    """Every GPU unit of `host` from its node devices' XML; ConfigError for an override that cannot apply."""
    overrides = overrides or {}
    cards: dict[str, Card] = {}
    mdevs: list[Mdev] = []
    for text in device_xmls:
        device = ET.fromstring(text)
        card = read_card(device)
        if card is not None:
            cards[card.name] = card
        mdev = read_mdev(device)
        if mdev is not None:
            mdevs.append(mdev)
    _check_overrides(host, overrides, cards)
    units: list[GpuUnit] = []
    for name in sorted(cards):
        own = sorted((m for m in mdevs if m.parent == name), key=lambda m: m.uuid)
        units += _card_units(host, cards[name], own, overrides.get(name, {}), create_mdevs)
    return units


def _card_units(host: str, card: Card, mdevs: list[Mdev], override: Mapping[str, str], create: bool) -> list[GpuUnit]:
    mode = override.get("mode") or ("mdev" if mdevs else "pci")
    if mode == "off":
        return []
    if mode == "pci":
        if mdevs:
            raise ConfigError(
                f"libvirt host {host}: gpus.{card.name}.mode: pci, but the card has vGPU instances "
                f"({', '.join(m.uuid for m in mdevs)}); set gpus.{card.name}.mode = mdev or off, or remove them"
            )
        model = override.get("model") or card.model
        return [GpuUnit(f"{host}/{card.name}", host, model, "pci", card.address, "", card.name)]
    return _vgpu_units(host, card, mdevs, override, create)


def _vgpu_units(host: str, card: Card, mdevs: list[Mdev], override: Mapping[str, str], create: bool) -> list[GpuUnit]:
    """The card's existing mdevs of its type, then (with `create`) the ones it could still create."""
    wanted = override.get("mdev_type")
    types = {t.id: t for t in card.types}
    if wanted is not None and wanted not in types and not any(m.type == wanted for m in mdevs):
        offered = ", ".join(types) or "none"
        raise ConfigError(f"libvirt host {host}: gpus.{card.name}.mdev_type: the card offers no type {wanted!r} (offers: {offered})")
    chosen = [m for m in mdevs if wanted is None or m.type == wanted]
    units = [_vgpu(host, card, m.uuid, m.type, types.get(m.type), override) for m in chosen]
    kinds = {m.type for m in chosen}
    create_type = wanted or (kinds.pop() if len(kinds) == 1 else None)
    if create and create_type in types:
        taken = {m.uuid for m in mdevs}
        for new in _new_uuids(host, card.name, create_type, types[create_type].available, taken):
            units.append(_vgpu(host, card, new, create_type, types[create_type], override))
    return units


def _vgpu(host: str, card: Card, mdev_uuid: str, type_id: str, kind: MdevType | None, override: Mapping[str, str]) -> GpuUnit:
    model = override.get("model") or vgpu_model(card, kind.name if kind and kind.name else type_id)
    return GpuUnit(f"{host}/{mdev_uuid}", host, model, "mdev", mdev_uuid, type_id, card.name)


def _new_uuids(host: str, card: str, type_id: str, count: int, taken: set[str]) -> list[str]:
    """`count` UUIDs by index order, skipping those already created, so keys stay put as mdevs appear."""
    found: list[str] = []
    index = 0
    while len(found) < count:
        candidate = str(uuid.uuid5(MDEV_NAMESPACE, f"{host}/{card}/{type_id}/{index}"))
        if candidate not in taken:
            found.append(candidate)
        index += 1
    return found


def _check_overrides(host: str, overrides: Mapping[str, Mapping[str, str]], cards: Mapping[str, Card]) -> None:
    for name in overrides:
        if name not in cards:
            known = ", ".join(sorted(cards)) or "none"
            raise ConfigError(f"libvirt host {host}: gpus.{name}: no such GPU on the host (GPUs: {known})")


# -- reading node devices --------------------------------------------------------------------------------
def read_card(device: ET.Element) -> Card | None:
    """The GPU a node device is, or None when it is not a PCI display controller of a known vendor."""
    pci = _capability(device, "pci")
    if pci is None:
        return None
    vendor = VENDORS.get(_number(pci.find("vendor"), "id"))
    if vendor is None or (_int(pci.findtext("class")) >> 16) != DISPLAY_CLASS:
        return None
    product = pci.find("product")
    short = short_name(product.text if product is not None and product.text else "", _number(product, "id"))
    return Card(
        name=device.findtext("name", ""),
        address=_address(pci),
        model=_trim(f"{vendor}-{short}"),
        short=short,
        types=tuple(_mdev_types(pci)),
    )


def read_mdev(device: ET.Element) -> Mdev | None:
    """The mediated device a node device is, or None."""
    mdev = _capability(device, "mdev")
    if mdev is None:
        return None
    kind = mdev.find("type")
    found = mdev.findtext("uuid") or device.findtext("path", "").rsplit("/", 1)[-1]
    return Mdev(found.strip().lower(), kind.get("id", "") if kind is not None else "", device.findtext("parent", ""))


def _capability(device: ET.Element, kind: str) -> ET.Element | None:
    return next((c for c in device.findall("capability") if c.get("type") == kind), None)


def _mdev_types(pci: ET.Element) -> list[MdevType]:
    types = next((c for c in pci.findall("capability") if c.get("type") == "mdev_types"), None)
    if types is None:
        return []
    return [MdevType(t.get("id", ""), t.findtext("name", "").strip(), _int(t.findtext("availableInstances")))
            for t in types.findall("type")]


def _address(pci: ET.Element) -> str:
    domain, bus, slot, function = (_int(pci.findtext(key)) for key in ("domain", "bus", "slot", "function"))
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _int(text: str | None) -> int:
    """A number as node device XML writes it: decimal (`65`) or hexadecimal (`0x030200`)."""
    try:
        return int((text or "0").strip(), 0)
    except ValueError:
        return -1


def _number(element: ET.Element | None, attribute: str) -> int:
    return _int(element.get(attribute)) if element is not None else -1


# -- names -------------------------------------------------------------------------------------------------
def short_name(product: str, product_id: int = -1) -> str:
    """The product's short name: "TU104GL [Tesla T4]" -> "t4" (the rule is in the module docstring)."""
    brackets = re.findall(r"\[([^\]]*)\]", product)
    words = (brackets[-1] if brackets else product).split()
    while len(words) > 1 and words[0].lower() in MARKETING:
        words = words[1:]
    first = _slug(words[0].split("/")[0]) if words else ""
    return first or (f"{product_id:04x}" if product_id >= 0 else "gpu")


def vgpu_model(card: Card, type_name: str) -> str:
    """A vGPU's model: "nvidia-t4" with type "GRID T4-1B" -> "nvidia-t4-1b"."""
    words = type_name.split()
    while len(words) > 1 and words[0].lower() in MARKETING:
        words = words[1:]
    suffix = _slug("-".join(words))
    if suffix.startswith(card.short + "-") and len(suffix) > len(card.short) + 1:
        suffix = suffix[len(card.short) + 1:]
    return _trim(f"{card.model}-{suffix or 'vgpu'}")


def _slug(text: str) -> str:
    """Lower case, anything but [a-z0-9._] made a dash, no dash at either end."""
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-._")


def _trim(model: str) -> str:
    return model[:MAX_MODEL].rstrip("-._")
