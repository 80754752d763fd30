"""Tests of the libvirt connector's pure modules; libvirt's test driver (no daemon) checks the XML they make.

`hosts/` holds test-driver host definitions: `gpu-host.xml` (a copy of ../shared/tools/tiny-guest's, two
NVIDIA GPUs, one with a vGPU) and `gpu-rack.xml` (eight GPUs of three vendors and three non-GPU devices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOSTS = Path(__file__).resolve().parent / "hosts"


def host_uri(host: str) -> str:
    """The test-driver URI of a host file in `hosts/`: every open of it starts from the file's state."""
    return f"test://{HOSTS / host}"


def open_host(host: str) -> Any:
    """A fresh test-driver connection to `hosts/<host>`, libvirt's error printing silenced."""
    import libvirt

    libvirt.registerErrorHandler(lambda context, error: None, None)
    return libvirt.open(host_uri(host))


def device_xmls(connection: Any) -> list[str]:
    """The XML of every node device of a connection, as the connector lists them."""
    return [device.XMLDesc() for device in connection.listAllDevices()]
