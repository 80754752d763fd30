"""Secrets at rest: backend credentials and other sensitive values are stored Fernet-encrypted.

Keys come from settings (`encryption_keys`, newest first, so a key can be rotated by prepending a new one)
or, on a fresh install, from a key file generated once in the data directory with mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets as std_secrets
from pathlib import Path
from typing import Any, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from broker.config import Settings
from broker.errors import ConfigError


def _generated(path: Path, make: Any) -> str:
    """Read a generated secret from `path`, creating it (0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def secret_key(settings: Settings) -> str:
    """The key that signs sessions and tokens."""
    return settings.secret_key or _generated(
        Path(settings.data_dir) / "secret.key", lambda: std_secrets.token_urlsafe(48)
    )


class Vault:
    """Encrypts and decrypts small JSON documents (credentials) with the configured keys."""

    def __init__(self, keys: list[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except (ValueError, TypeError):
            raise ConfigError("encryption_keys: each key must be a urlsafe base64 Fernet key") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Vault":
        keys = list(settings.encryption_keys) or [
            _generated(Path(settings.data_dir) / "encryption.key", lambda: Fernet.generate_key().decode())
        ]
        return cls(keys)

    def seal(self, document: Mapping[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(dict(document)).encode())

    def open(self, token: bytes | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return json.loads(self._fernet.decrypt(token))
        except InvalidToken:
            raise ConfigError("stored credentials cannot be decrypted: is an old encryption key missing?") from None
