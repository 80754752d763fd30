"""The `[backends.libvirt]` table of a catalogue entry: disk image or direct kernel boot, cloud-init, agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.catalogue import CatalogueError, LibvirtBackend, load
from tests.catalogue import ENTRY, make_root, write_entry

FILE = "desktop-images/catalogue/lab.toml"
TABLE = '''[backends.libvirt]
base_image = "debian-lab-desktop.qcow2"
machine = "q35"
video = "virtio"
graphics = "vnc"
'''


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return make_root(tmp_path)


def entry_with(root: Path, table: str) -> Path:
    assert TABLE in ENTRY
    return write_entry(root, "lab", ENTRY.replace(TABLE, "[backends.libvirt]\n" + table))


def libvirt_of(root: Path, table: str) -> LibvirtBackend:
    backend = load(entry_with(root, table)).backends.libvirt
    assert backend is not None
    return backend


def problems(root: Path, table: str) -> list[str]:
    with pytest.raises(CatalogueError) as caught:
        load(entry_with(root, table))
    return [problem.removeprefix(f"{FILE}: ") for problem in caught.value.problems]


def test_a_disk_image_gets_cloud_init_and_the_agent_by_default(root: Path) -> None:
    assert libvirt_of(root, 'base_image = "debian.qcow2"\n') == LibvirtBackend(
        base_image="debian.qcow2", machine="q35", video="virtio", graphics="vnc", cloud_init=True, guest_agent=True)


def test_a_kernel_guest_gets_no_cloud_init_by_default(root: Path) -> None:
    backend = libvirt_of(root, 'kernel = "tiny-vmlinuz"\ninitrd = "tiny-initrd.img"\ncmdline = "console=ttyS0 panic=-1"\n'
                               'graphics = "none"\nmachine = "pc"\n')
    assert backend == LibvirtBackend(kernel="tiny-vmlinuz", initrd="tiny-initrd.img", cmdline="console=ttyS0 panic=-1",
                                     graphics="none", machine="pc", cloud_init=False, guest_agent=True)


def test_everything_given(root: Path) -> None:
    backend = libvirt_of(root, 'base_image = "d.qcow2"\nkernel = "k"\ninitrd = "i"\ncmdline = "root=/dev/vda1"\n'
                               "cloud_init = false\nguest_agent = false\n")
    assert (backend.base_image, backend.kernel, backend.cloud_init, backend.guest_agent) == ("d.qcow2", "k", False, False)


def test_the_spec_carries_the_normalized_flags(root: Path) -> None:
    spec = load(entry_with(root, 'kernel = "k"\n')).spec()["backends"]["libvirt"]
    assert spec == {"machine": "q35", "video": "virtio", "graphics": "vnc", "kernel": "k", "cloud_init": False,
                    "guest_agent": True}


@pytest.mark.parametrize(("table", "expected"), [
    ("", ["backends.libvirt: needs base_image (a disk image) or kernel (direct kernel boot), or both"]),
    ('machine = "pc"\n', ["backends.libvirt: needs base_image (a disk image) or kernel (direct kernel boot), or both"]),
    ('base_image = "d.qcow2"\ninitrd = "i"\ncmdline = "quiet"\n', [
        "backends.libvirt.initrd: only with kernel (direct kernel boot)",
        "backends.libvirt.cmdline: only with kernel (direct kernel boot)"]),
    ('kernel = "/boot/vmlinuz"\n', ['backends.libvirt.kernel: expected a volume name in the host\'s image pool, got "/boot/vmlinuz"']),
    ('kernel = "k"\ninitrd = "../i"\n', ['backends.libvirt.initrd: expected a volume name in the host\'s image pool, got "../i"']),
    ('kernel = "k"\ncmdline = " "\n', ["backends.libvirt.cmdline: expected a kernel command line, got an empty string"]),
    ('kernel = "k"\ncmdline = 3\n', ["backends.libvirt.cmdline: expected a string, got 3"]),
    ('base_image = "d"\ncloud_init = "yes"\n', ['backends.libvirt.cloud_init: expected true or false, got "yes"']),
    ('base_image = "d"\nguest_agent = 1\n', ["backends.libvirt.guest_agent: expected true or false, got 1"]),
    ('base_image = "d"\ncloudinit = true\n', ['backends.libvirt.cloudinit: unknown key (did you mean "cloud_init"?)']),
    ('base_image = "d"\nroot_password = "x"\n',
     ["backends.libvirt.root_password: no passwords or secrets in the catalogue: credentials are injected at boot"]),
])
def test_bad_libvirt_tables_are_refused_with_the_key(root: Path, table: str, expected: list[str]) -> None:
    assert problems(root, table) == expected



def test_a_fixed_mac_is_accepted_and_a_malformed_one_named(root: Path) -> None:
    assert libvirt_of(root, 'kernel = "vmlinuz"\nmac = "52:54:00:ab:cd:99"\n').mac == "52:54:00:ab:cd:99"
    assert libvirt_of(root, 'kernel = "vmlinuz"\n').mac is None
    assert problems(root, 'kernel = "vmlinuz"\nmac = "52:54:00:AB:CD"\n') == [
        'backends.libvirt.mac: expected a lower-case MAC address such as "52:54:00:ab:cd:99", got "52:54:00:AB:CD"'
    ]
