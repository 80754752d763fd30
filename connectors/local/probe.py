"""Whether a VNC server answers: it speaks first, with a 12-byte version banner "RFB 003.xxx\\n".

A listening socket alone proves little: the kernel accepts connections even for a stopped process.
"""

from __future__ import annotations

import socket

BANNER = b"RFB 003."


def read_banner(host: str, port: int, timeout: float = 1.0) -> bytes:
    """The first 12 bytes the server at host:port sends, fewer if it closes or stays silent too long."""
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            while len(data) < 12:
                chunk = conn.recv(12 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError:
        pass
    return data


def speaks_rfb(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a VNC server at host:port sends its RFB 3.x banner within `timeout` seconds."""
    return read_banner(host, port, timeout).startswith(BANNER)
