"""Tests of the libvirt connector's pure modules; libvirt's test driver (no daemon) checks the XML they make.

Test-driver host definitions: our own `hosts/gpu-rack.xml` (eight GPUs of three vendors and three non-GPU
devices), and `gpu-host.xml` (two NVIDIA GPUs, one with a vGPU), which is read from ../shared/tools/tiny-guest,
never copied here; tests that use it skip saying so when it is absent (and fail under CI=true).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOSTS = Path(__file__).resolve().parent / "hosts"
SHARED_EXAMPLES = Path(__file__).resolve().parents[4] / "shared/tools/tiny-guest/examples"


def host_file(host: str) -> Path:
    """`hosts/<host>`, or the shared tiny-guest example of that name (skipping the test without it)."""
    if (HOSTS / host).exists():
        return HOSTS / host
    shared = SHARED_EXAMPLES / host
    if not shared.exists():
        from tests.support.libvirt import unavailable

        unavailable(f"{shared} is absent (../shared/tools/tiny-guest)")
    return shared


def host_uri(host: str) -> str:
    """The test-driver URI of a host file: every open of it starts from the file's state."""
    return f"test://{host_file(host)}"


def open_host(host: str) -> Any:
    """A fresh test-driver connection to `hosts/<host>`, libvirt's error printing silenced."""
    import libvirt

    libvirt.registerErrorHandler(lambda context, error: None, None)
    return libvirt.open(host_uri(host))


def device_xmls(connection: Any) -> list[str]:
    """The XML of every node device of a connection, as the connector lists them."""
    return [device.XMLDesc() for device in connection.listAllDevices()]
