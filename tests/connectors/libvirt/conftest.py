"""Backends and catalogue entries for the libvirt connector's tests.

Test-driver hosts are the first engineer's host files (hosts/*.xml) copied into tmp_path with the volumes a
test needs added to their `default` pool, since the test driver only knows the volumes its XML declares (or
that the connector itself creates on its one connection).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import pytest

from tests.connectors.libvirt import host_file

SEED = "libvirt-tests-seed"


def host_uri(tmp_path: Path, name: str, source: str = "gpu-rack.xml", volumes: Iterable[str] = ("base.qcow2", "vmlinuz", "initrd.img"),
              memory_kib: int | None = None) -> str:
    """A `test:///...` URI of a copy of hosts/<source> whose default pool holds `volumes`."""
    xml = host_file(source).read_text()
    added = "".join(f"<volume><name>{v}</name><capacity unit='GiB'>2</capacity><target><format type='qcow2'/></target></volume>"
                    for v in volumes)
    xml = re.sub(r"(<pool type='dir'>.*?</target>)", lambda m: m.group(1) + added, xml, count=1, flags=re.S)
    if memory_kib is not None:
        xml = re.sub(r"<memory>\d+</memory>", f"<memory>{memory_kib}</memory>", xml, count=1)
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return f"test://{path}"


def host(name: str, uri: str, vcpus: int = 16, memory_mb: int = 65536, **extra: Any) -> dict[str, Any]:
    return {"name": name, "uri": uri, "vcpus": vcpus, "memory_mb": memory_mb, **extra}


def backend_config(*hosts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"hosts": list(hosts), "credential_seed": SEED, "forward_ports": [43000, 43999], **extra}


def lab_params(ports: Iterable[tuple[str, int]] = (("ssh", 22),), vcpu: int = 2, ram_mb: int = 2048, gpu: str | None = None,
               user: str = "learner", **libvirt: Any) -> dict[str, Any]:
    """A catalogue entry's params; the test driver's images run no agent and take no cloud-init seed."""
    backend = {"base_image": "base.qcow2", "cloud_init": False, "guest_agent": False, "graphics": "vnc", **libvirt}
    return {
        "resources": {"vcpu": vcpu, "ram_mb": ram_mb, "disk_gb": 10, "gpu": gpu or False},
        "hosts": [{"name": "main", "ports": [{"protocol": p, "port": n} for p, n in ports]}],
        "lab_user": {"name": user},
        "backends": {"libvirt": backend},
    }


@pytest.fixture
def libvirt_module() -> Any:
    return pytest.importorskip("libvirt", reason="libvirt-python is not installed")
