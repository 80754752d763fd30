"""A throwaway certificate authority and a server certificate for loopback HTTPS tests.

The browser test needs two *sites* over HTTPS: the LMS at `https://localhost:PORT` and LabDesk at
`https://127.0.0.1:PORT` (a host name and an IP address are different sites to a browser, and both resolve
without touching /etc/hosts). One leaf certificate covers both names, signed by a CA made per test run.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TestCA:
    __test__ = False  # a fixture value, not a test class
    ca_file: Path  # PEM of the CA: what clients must trust (REQUESTS_CA_BUNDLE)
    cert_file: Path  # the server's certificate
    key_file: Path
    spki_sha256: str  # base64 SHA-256 of the server key, for chromium's --ignore-certificate-errors-spki-list


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_ca(folder: Path) -> TestCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("LabDesk test CA")).issuer_name(_name("LabDesk test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TestCA(
        ca_file=_write(folder / "ca.pem", ca.public_bytes(pem)),
        cert_file=_write(folder / "server.pem", leaf.public_bytes(pem)),
        key_file=_write(folder / "server.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
        spki_sha256=base64.b64encode(hashlib.sha256(spki).digest()).decode(),
    )
