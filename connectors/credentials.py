"""Per-lab credentials derived deterministically from a backend's secret seed and the lab id.

A connector that builds a lab machine (Heat now, libvirt and Vagrant later) must give it a learner
password, a VNC password and two SSH keys. Deriving them, rather than generating and storing them, means
nothing per-lab is kept in plain text anywhere: the only secret is the backend's seed, which the broker
stores encrypted at rest like every other backend secret (`labdesk backends add --secret`). A retried
provision derives the very same values, so a half-done attempt never leaves a machine whose password
nobody knows. A lab reset gets a new lab id, and so new credentials.

Each value comes from HMAC-SHA256(seed, "labdesk/lab/<id>/<purpose>"). The seed is used as its UTF-8
bytes, whatever it looks like (`new_seed` makes a good one). Characters are drawn from an HMAC stream by
rejection sampling, so every character of an alphabet is equally likely.

SHA-512 crypt uses the standard `crypt` module, deprecated in Python 3.12 and removed in 3.13. On 3.13 or
later install the `crypt_r` package (the same module, kept on PyPI); it is not a dependency of LabDesk
while the supported Pythons still ship `crypt`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import struct
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43 has it only here
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]

PASSWORD_LENGTH = 16
PASSWORD_ALPHABET = string.ascii_letters + string.digits
SALT_LENGTH = 16
SALT_ALPHABET = "./" + string.ascii_letters + string.digits
VNC_LENGTH = 8

# VNC's fixed DES key {23,82,107,6,35,78,88,7}. VNC's DES (d3des) reads each key byte lowest bit first,
# standard DES highest bit first, so a standard DES needs every byte bit-reversed: 17 -> e8, 52 -> 4a, ...
VNC_KEY = bytes([0x17, 0x52, 0x6B, 0x06, 0x23, 0x4E, 0x58, 0x07])
_VNC_DES_KEY = bytes(int(f"{byte:08b}"[::-1], 2) for byte in VNC_KEY)


@dataclass(frozen=True)
class LabCredentials:
    """Everything secret a lab machine is built with; `repr` shows no secret."""

    password: str
    password_hash: str
    vnc_password: str
    vnc_passwd_b64: str
    service_private_key: str
    service_public_key: str
    learner_private_key: str
    learner_public_key: str

    def __repr__(self) -> str:
        return f"LabCredentials(service={self.service_public_key!r}, learner={self.learner_public_key!r})"


def new_seed() -> str:
    """A fresh random seed (urlsafe base64 of 32 random bytes)."""
    return secrets.token_urlsafe(32)


def derive(seed: str, lab_id: int) -> LabCredentials:
    """The credentials of lab `lab_id` under `seed`: always the same for the same pair."""
    if not seed:
        raise ValueError("the credentials seed is empty: give the backend a secret seed (see new_seed())")
    key = seed.encode()
    password = _draw(key, lab_id, "password", PASSWORD_ALPHABET, PASSWORD_LENGTH)
    salt = _draw(key, lab_id, "salt", SALT_ALPHABET, SALT_LENGTH)
    vnc_password = password[:VNC_LENGTH]
    service = _ed25519(key, lab_id, "service-key")
    learner = _ed25519(key, lab_id, "learner-key")
    return LabCredentials(
        password=password,
        password_hash=sha512_crypt(password, salt),
        vnc_password=vnc_password,
        vnc_passwd_b64=base64.b64encode(vnc_passwd(vnc_password)).decode(),
        service_private_key=openssh_private_key(service, f"labdesk-service-lab-{lab_id}"),
        service_public_key=openssh_public_key(service, f"labdesk-service-lab-{lab_id}"),
        learner_private_key=openssh_private_key(learner, f"labdesk-learner-lab-{lab_id}"),
        learner_public_key=openssh_public_key(learner, f"labdesk-learner-lab-{lab_id}"),
    )


def _mac(key: bytes, lab_id: int, purpose: str) -> bytes:
    """HMAC-SHA256(seed, "labdesk/lab/<id>/<purpose>"): 32 bytes no other lab or purpose shares."""
    return hmac.new(key, f"labdesk/lab/{lab_id}/{purpose}".encode(), hashlib.sha256).digest()


def _stream(key: bytes, lab_id: int, purpose: str) -> Iterator[int]:
    """An endless byte stream for `purpose`: the MACs of "<purpose>/0", "<purpose>/1", ..."""
    block = 0
    while True:
        yield from _mac(key, lab_id, f"{purpose}/{block}")
        block += 1


def _draw(key: bytes, lab_id: int, purpose: str, alphabet: str, length: int) -> str:
    """`length` characters of `alphabet`, uniform: bytes at or above the last whole multiple are skipped."""
    limit = 256 - 256 % len(alphabet)
    chars = (alphabet[byte % len(alphabet)] for byte in _stream(key, lab_id, purpose) if byte < limit)
    return "".join(next(chars) for _ in range(length))


def _crypt_module() -> ModuleType:
    """The standard `crypt` module (deprecated, silenced here), else the `crypt_r` package."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            try:
                import crypt_r as crypt  # type: ignore[import-not-found,no-redef]
            except ImportError as exc:
                raise ImportError(
                    "SHA-512 crypt needs the standard crypt module (Python < 3.13) or the crypt_r package"
                ) from exc
    return crypt


def sha512_crypt(password: str, salt: str) -> str:
    """The crypt(3) SHA-512 hash "$6$<salt>$<hash>" (default rounds), as /etc/shadow takes it."""
    hashed = _crypt_module().crypt(password, f"$6${salt}$")
    if not hashed or not hashed.startswith(f"$6${salt}$"):
        raise RuntimeError("this system's crypt(3) does not support SHA-512 ($6$)")
    return hashed


def vnc_passwd(password: str) -> bytes:
    """The 8-byte ~/.vnc/passwd content for `password`, exactly as `vncpasswd -f` writes it.

    VNC keeps at most 8 bytes, NUL-padded, obfuscated with single DES-ECB under VNC's fixed key. A
    three-key TripleDES whose three keys are equal is single DES.
    """
    block = password.encode()[:VNC_LENGTH].ljust(VNC_LENGTH, b"\0")
    encryptor = Cipher(TripleDES(_VNC_DES_KEY * 3), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def _ed25519(key: bytes, lab_id: int, purpose: str) -> Ed25519PrivateKey:
    """The Ed25519 key whose 32-byte private seed is the MAC for `purpose`."""
    return Ed25519PrivateKey.from_private_bytes(_mac(key, lab_id, purpose))


def openssh_public_key(private: Ed25519PrivateKey, comment: str) -> str:
    """The authorized_keys line "ssh-ed25519 AAAA... <comment>"."""
    encoding, public_format = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    public = private.public_key().public_bytes(encoding, public_format)
    return f"{public.decode()} {comment}"


def openssh_private_key(private: Ed25519PrivateKey, comment: str) -> str:
    """The unencrypted OpenSSH private key file for `private`, byte for byte the same on every call.

    `cryptography`'s `PrivateFormat.OpenSSH` writes a random check integer into every file it serializes,
    so the same key would give a different file on each call. This writes the format of OpenSSH's
    PROTOCOL.key itself, with the check integer taken from the public key (for an unencrypted key any
    value is valid) and with the comment, as ssh-keygen writes it.
    """
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public_blob = _sshstr(b"ssh-ed25519") + _sshstr(public)
    check = public[:4]
    section = check + check + public_blob + _sshstr(raw + public) + _sshstr(comment.encode())
    section += bytes(range(1, 1 + (-len(section)) % 8))
    body = b"openssh-key-v1\0" + _sshstr(b"none") + _sshstr(b"none") + _sshstr(b"")
    body += struct.pack(">I", 1) + _sshstr(public_blob) + _sshstr(section)
    text = base64.b64encode(body).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""])


def _sshstr(data: bytes) -> bytes:
    """An SSH wire-format string: a 4-byte big-endian length, then the bytes."""
    return struct.pack(">I", len(data)) + data
