"""An X authority file holding one MIT-MAGIC-COOKIE-1, so that only the lab's own clients reach its display.

Without it Xvfb accepts clients from any local user, who could then watch or type into a learner's lab.
Xvfb reads the file through `-auth`; the clients find it through $XAUTHORITY.
"""

from __future__ import annotations

import secrets
import struct
from pathlib import Path

from connectors.local.password import write_secret

FAMILY_WILD = 0xFFFF  # matches any host address, so the entry needs no hostname
AUTH_NAME = b"MIT-MAGIC-COOKIE-1"


def _counted(data: bytes) -> bytes:
    """A field of the Xauthority format: a big-endian 16-bit length, then the bytes."""
    return struct.pack(">H", len(data)) + data


def entry(display: int, cookie: bytes) -> bytes:
    """One Xauthority record: family, address, display number, auth name and auth data."""
    fields = (b"", str(display).encode(), AUTH_NAME, cookie)
    return struct.pack(">H", FAMILY_WILD) + b"".join(_counted(f) for f in fields)


def write_authority(path: Path, display: int) -> bytes:
    """Write a 0600 authority file with a fresh 16-byte cookie for `display`; returns the cookie."""
    cookie = secrets.token_bytes(16)
    write_secret(path, entry(display, cookie))
    return cookie
