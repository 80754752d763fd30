"""A minimal RFB (VNC) client for tests: the 3.8 handshake with VNC authentication, up to ServerInit.

It proves what guacd will do: reach a lab's endpoint and log in with the endpoint's password.
VNC authentication DES-encrypts a 16-byte challenge with the password (8 bytes, NUL-padded) as key,
each key byte with its bits reversed, a quirk of the original VNC code.
"""

from __future__ import annotations

import socket
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

VERSION = b"RFB 003.008\n"
VNC_AUTH = 2


class AuthFailed(Exception):
    """The server refused the password (or offered no VNC authentication)."""


def vnc_key(password: str) -> bytes:
    """The DES key VNC derives from a password: 8 bytes, NUL-padded, each byte bit-reversed."""
    raw = password.encode("latin-1")[:8].ljust(8, b"\0")
    return bytes(int(f"{byte:08b}"[::-1], 2) for byte in raw)


def vnc_response(challenge: bytes, password: str) -> bytes:
    """The answer to a 16-byte challenge: DES-ECB (as 3DES with the key thrice) of the challenge."""
    encryptor = Cipher(TripleDES(vnc_key(password) * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def _read(conn: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes, or ConnectionError if the server hangs up first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"server closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _reason(conn: socket.socket) -> str:
    (length,) = struct.unpack(">I", _read(conn, 4))
    return _read(conn, length).decode("latin-1", "replace")


def _authenticate(conn: socket.socket, password: str) -> None:
    """Security handshake of RFB 3.8 with VNC authentication; raises AuthFailed when refused."""
    count = _read(conn, 1)[0]
    if count == 0:
        raise AuthFailed(_reason(conn))
    if VNC_AUTH not in _read(conn, count):
        raise AuthFailed("server does not offer VNC authentication")
    conn.sendall(bytes([VNC_AUTH]))
    conn.sendall(vnc_response(_read(conn, 16), password))
    (result,) = struct.unpack(">I", _read(conn, 4))
    if result != 0:
        raise AuthFailed(_reason(conn))


def connect(host: str, port: int, password: str, timeout: float = 5.0) -> tuple[int, int]:
    """Log in to the VNC server at host:port and return its framebuffer size (width, height)."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        banner = _read(conn, 12)
        if not banner.startswith(b"RFB 003."):
            raise ConnectionError(f"not an RFB server: {banner!r}")
        conn.sendall(VERSION)
        _authenticate(conn, password)
        conn.sendall(b"\x01")  # ClientInit: share the desktop with other viewers
        width, height = struct.unpack(">HH", _read(conn, 4))
        _read(conn, 16)  # pixel format
        _read(conn, struct.unpack(">I", _read(conn, 4))[0])  # desktop name
        return width, height
