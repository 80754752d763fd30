"""Tests of the per-lab credentials: determinism, and every value checked by the real tool that reads it.

The password hash is recomputed by `openssl passwd -6`, the VNC password file by TigerVNC's `vncpasswd -f`
(Debian's tigervnc-tools; the test skips without it, but fixed vectors taken from it always run) and the
private keys are opened by `ssh-keygen -y` and by `cryptography`'s own OpenSSH parser.
"""

from __future__ import annotations

import base64
import os
import shutil
import string
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connectors.credentials import LabCredentials, derive, new_seed, vnc_passwd

SEED = "k2oB0lVtI3nq4m7XxQ0eW1s9yH6cR8pA5dZfG2jLuTw"
KEYS = [("service_private_key", "service_public_key"), ("learner_private_key", "learner_public_key")]


def run(argv: list[str], stdin: str = "") -> bytes:
    return subprocess.run(argv, input=stdin.encode(), capture_output=True, check=True, timeout=30).stdout


def program(*names: str) -> str:
    """The first of `names` on PATH, else skip the test saying what to install."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"{' / '.join(names)} not installed")


def values(credentials: LabCredentials) -> dict[str, str]:
    return {field.name: getattr(credentials, field.name) for field in fields(credentials)}


# Determinism -------------------------------------------------------------------------------------------


def test_the_same_seed_and_lab_give_the_same_credentials() -> None:
    assert derive(SEED, 42) == derive(SEED, 42)
    assert values(derive(SEED, 42)) == values(derive(SEED, 42))


@pytest.mark.parametrize(("seed", "lab_id"), [(SEED, 43), (new_seed(), 42)], ids=["other-lab", "other-seed"])
def test_another_lab_or_seed_changes_every_value(seed: str, lab_id: int) -> None:
    first, other = values(derive(SEED, 42)), values(derive(seed, lab_id))
    assert [name for name in first if first[name] == other[name]] == []


def test_the_service_and_learner_keys_differ() -> None:
    credentials = derive(SEED, 42)
    assert credentials.service_private_key != credentials.learner_private_key
    assert credentials.service_public_key.split()[1] != credentials.learner_public_key.split()[1]


def test_an_empty_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed is empty"):
        derive("", 42)


def test_new_seeds_are_32_random_bytes_in_urlsafe_base64() -> None:
    seeds = {new_seed() for _ in range(20)}
    assert len(seeds) == 20
    for seed in seeds:
        assert len(base64.urlsafe_b64decode(seed + "=")) == 32


def test_repr_shows_no_secret() -> None:
    credentials = derive(SEED, 42)
    shown = repr(credentials)
    assert credentials.password not in shown and "PRIVATE" not in shown
    assert "labdesk-service-lab-42" in shown


# Passwords ---------------------------------------------------------------------------------------------


def test_passwords_are_16_alphanumerics_and_vnc_takes_the_first_8() -> None:
    for lab_id in range(50):
        credentials = derive(SEED, lab_id)
        assert len(credentials.password) == 16
        assert set(credentials.password) <= set(string.ascii_letters + string.digits)
        assert credentials.vnc_password == credentials.password[:8]


def test_password_characters_cover_the_whole_alphabet() -> None:
    drawn = "".join(derive(SEED, lab_id).password for lab_id in range(300))
    assert set(drawn) == set(string.ascii_letters + string.digits)


@pytest.mark.parametrize("lab_id", [1, 42, 100_000])
def test_the_password_hash_is_what_openssl_computes(lab_id: int) -> None:
    openssl = program("openssl")
    credentials = derive(SEED, lab_id)
    _, scheme, salt, _ = credentials.password_hash.split("$")
    assert scheme == "6" and len(salt) == 16
    assert set(salt) <= set("./" + string.ascii_letters + string.digits)
    expected = run([openssl, "passwd", "-6", "-salt", salt, "-stdin"], credentials.password).decode().strip()
    assert credentials.password_hash == expected


# VNC password file -------------------------------------------------------------------------------------

# Taken once from the real tool: `printf '%s\n' <password> | tigervncpasswd -f | xxd -p`, with Debian 12's
# tigervnc-tools 1.12.0+dfsg-8. "password" -> dbd83cfd727a1458 is also the widely published VNC value.
VNCPASSWD_VECTORS = [
    ("password", "dbd83cfd727a1458"),
    ("LabDesk1", "166fe815c8f930a4"),
    ("Zq3xY7pW", "cf93593f59aa62fa"),
    ("", "5ab2cdc0badcaf13"),
]


@pytest.mark.parametrize(("password", "file_hex"), VNCPASSWD_VECTORS)
def test_vnc_passwd_matches_vectors_from_tigervncpasswd(password: str, file_hex: str) -> None:
    assert vnc_passwd(password).hex() == file_hex


def test_vnc_passwd_keeps_only_8_bytes_like_vncpasswd() -> None:
    assert vnc_passwd("passwordXYZ") == vnc_passwd("password")


@pytest.mark.parametrize("lab_id", [1, 42, 100_000])
def test_the_vnc_passwd_file_is_what_vncpasswd_writes(lab_id: int) -> None:
    vncpasswd = program("tigervncpasswd", "vncpasswd")
    credentials = derive(SEED, lab_id)
    written = run([vncpasswd, "-f"], credentials.vnc_password + "\n")
    assert base64.b64decode(credentials.vnc_passwd_b64) == written


# SSH keys ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("private_field", "public_field"), KEYS, ids=["service", "learner"])
def test_ssh_keygen_opens_the_private_key_and_prints_its_public_key(
    tmp_path: Path, private_field: str, public_field: str
) -> None:
    ssh_keygen = program("ssh-keygen")
    credentials = derive(SEED, 42)
    path = tmp_path / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(getattr(credentials, private_field))
    printed = run([ssh_keygen, "-y", "-f", str(path)]).decode().split()
    public = getattr(credentials, public_field).split()
    assert printed[:2] == public[:2]
    assert public[0] == "ssh-ed25519" and public[1].startswith("AAAA")


@pytest.mark.parametrize(("private_field", "public_field"), KEYS, ids=["service", "learner"])
def test_cryptography_opens_the_private_key(private_field: str, public_field: str) -> None:
    credentials = derive(SEED, 42)
    text = getattr(credentials, private_field)
    assert text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert text.endswith("-----END OPENSSH PRIVATE KEY-----\n")
    key = serialization.load_ssh_private_key(text.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert public.decode().split() == getattr(credentials, public_field).split()[:2]


def test_public_keys_carry_the_lab_comment() -> None:
    credentials = derive(SEED, 7)
    assert credentials.service_public_key.endswith(" labdesk-service-lab-7")
    assert credentials.learner_public_key.endswith(" labdesk-learner-lab-7")
