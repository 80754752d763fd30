"""The emulator's own RSA key: it signs id_tokens, and `GET /emulator/jwks` publishes its public half.

The key is generated once into `data_dir/emulator-key.pem` (mode 0600) and shared by every process on
the host; two processes starting at once agree on one key, because the file appears atomically (a hard
link, which never replaces an existing file). The kid is the key's RFC 7638 thumbprint, so every process
derives the same one without storing it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.config import Settings

FILE_NAME = "emulator-key.pem"

_lock = threading.Lock()
_loaded: dict[Path, "EmulatorKey"] = {}


@dataclass(frozen=True)
class EmulatorKey:
    kid: str
    private_key: rsa.RSAPrivateKey  # loaded once: parsing a PEM costs more than signing with it
    public_jwk: dict[str, Any]

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def key(settings: Settings) -> EmulatorKey:
    """The emulator's key, created on first use."""
    path = (Path(settings.data_dir) / FILE_NAME).resolve()
    with _lock:
        if path not in _loaded:
            _loaded[path] = _from_pem(_read_or_create(path))
        return _loaded[path]


def jwks(settings: Settings) -> dict[str, Any]:
    return {"keys": [key(settings).public_jwk]}


def sign(settings: Settings, claims: dict[str, Any]) -> str:
    return key(settings).sign(claims)


def _read_or_create(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".emulator-key-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)  # fails if another process made the key first; then theirs wins
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    return path.read_bytes()


def _from_pem(pem: bytes) -> EmulatorKey:
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey), "the emulator key file must hold an RSA key"
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    kid = _thumbprint(public)
    public.update(kid=kid, alg="RS256", use="sig")
    return EmulatorKey(kid=kid, private_key=private, public_jwk=public)


def _thumbprint(public: dict[str, Any]) -> str:
    canonical = json.dumps({"e": public["e"], "kty": "RSA", "n": public["n"]}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
