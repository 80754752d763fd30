"""Free TCP ports for the labs' VNC servers."""

from __future__ import annotations

import socket
from typing import Container


def free_port(host: str, taken: Container[int], attempts: int = 100) -> int:
    """A port nobody listens on now, chosen by the kernel, skipping ports other labs have reserved.

    Other labs reserve their port in lab.json before their VNC server binds it, so the kernel alone
    could hand the same port to two labs provisioned at once.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port not in taken:
            return port
    raise OSError(f"no free TCP port on {host} after {attempts} attempts")
