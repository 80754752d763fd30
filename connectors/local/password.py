"""The per-lab VNC password, kept in a file only its owner can read and never in lab.json or the handle.

VNC authentication uses at most 8 bytes of a password, so a longer one would only look stronger.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

LENGTH = 8


def new_password() -> str:
    """A random URL-safe password of exactly 8 characters (48 random bits)."""
    return secrets.token_urlsafe(6)[:LENGTH]


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to a new file created with mode 0600: never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_password(path: Path, password: str) -> None:
    """Store the password as the first line of `path`, the format of x11vnc's -passwdfile."""
    write_secret(path, f"{password}\n".encode())


def read_password(path: Path) -> str:
    """The password stored by `write_password`."""
    return path.read_text().splitlines()[0]
