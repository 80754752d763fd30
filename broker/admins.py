"""Admins of the console: local bootstrap accounts with a password, and accounts linked to the
institution's OpenID Connect provider (issuer + subject).

Passwords are hashed with the standard library's scrypt into a self-describing string
(`scrypt$n$r$p$salt$hash`, base64), so the cost can be raised later without breaking stored hashes, and no
extra dependency is needed. Verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.errors import LabDeskError
from broker.models import Admin

MIN_PASSWORD = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_DUMMY_HASH = ""  # filled on first use: verifying an unknown username costs as much as a known one


class AdminError(LabDeskError):
    """A refused admin change, said in one sentence."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; any malformed hash is simply no match."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=128 * int(r) * int(n) * 2)
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def new_password() -> str:
    """A strong random password (24 URL-safe characters, about 144 bits)."""
    return secrets.token_urlsafe(18)


def check_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password is too weak: use at least {MIN_PASSWORD} characters")


def find(session: Session, username: str) -> Admin | None:
    return session.scalar(select(Admin).where(Admin.username == username))


def create_local(session: Session, username: str, password: str, email: str = "") -> Admin:
    """A local admin; refuses a weak password or a username in use. The caller commits."""
    username = username.strip()
    if not username or len(username) > 255:
        raise AdminError("a username of 1 to 255 characters is needed")
    check_strength(password)
    if find(session, username) is not None:
        raise AdminError(f"an admin named '{username}' already exists")
    admin = Admin(username=username, email=email, password_hash=hash_password(password))
    session.add(admin)
    session.flush()
    return admin


def create_linked(session: Session, username: str, issuer: str, subject: str, email: str = "") -> Admin:
    """An admin who signs in only through the provider, linked ahead of time by subject (no password).

    For providers that send no `email_verified` claim: the allow-list never admits them, yet an identity
    linked by (issuer, subject) signs in. The caller commits."""
    if not issuer:
        raise AdminError("no OpenID Connect provider is configured (admin_oidc_issuer): an admin linked by subject could never sign in")
    subject = subject.strip()
    if not subject:
        raise AdminError("the subject (the provider's `sub` for this person) is empty")
    if session.scalar(select(Admin).where(Admin.issuer == issuer, Admin.subject == subject)) is not None:
        raise AdminError(f"the subject '{subject}' is already linked to an admin")
    username = username.strip()
    if not username or len(username) > 255:
        raise AdminError("a username of 1 to 255 characters is needed")
    if find(session, username) is not None:
        raise AdminError(f"an admin named '{username}' already exists")
    admin = Admin(username=username, email=email, issuer=issuer, subject=subject)
    session.add(admin)
    session.flush()
    return admin


def verify_local(session: Session, username: str, password: str) -> Admin | None:
    """The enabled local admin with this username and password, else None (same cost either way)."""
    global _DUMMY_HASH
    admin = find(session, username)
    stored = admin.password_hash if admin is not None and admin.password_hash else None
    if stored is None:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(new_password())
        check_password(password, _DUMMY_HASH)
        return None
    if not check_password(password, stored) or admin is None or admin.disabled:
        return None
    admin.last_sign_in_at = utcnow()
    return admin


@dataclass(frozen=True)
class OidcIdentity:
    """What a verified id_token says about who signed in."""

    issuer: str
    subject: str
    email: str
    email_verified: bool
    name: str = ""


def allowed_by_rule(identity: OidcIdentity, allowed: tuple[str, ...]) -> bool:
    """True when a verified email is listed, or its domain is (an entry `@example.edu`)."""
    if not identity.email or not identity.email_verified:
        return False
    email = identity.email.lower()
    domain = "@" + email.rpartition("@")[2]
    return any(entry.lower() in (email, domain) for entry in allowed)


def link_oidc(session: Session, identity: OidcIdentity, allowed: tuple[str, ...]) -> Admin | None:
    """The admin this identity signs in as, created or linked on first sign-in; None when not allowed.

    Already linked (issuer + subject) wins, even if the allow-list changed since: disable the admin to
    stop them. Otherwise the identity must pass the allow-list; an existing unlinked admin with the same
    verified email (a bootstrap admin) is linked rather than duplicated. The caller commits.
    """
    admin = session.scalar(select(Admin).where(Admin.issuer == identity.issuer, Admin.subject == identity.subject))
    if admin is None:
        if not allowed_by_rule(identity, allowed):
            return None
        admin = _unlinked_by_email(session, identity.email) or _new_oidc_admin(session, identity)
        admin.issuer, admin.subject = identity.issuer, identity.subject
    if admin.disabled:
        return None
    admin.last_sign_in_at = utcnow()
    return admin


def _unlinked_by_email(session: Session, email: str) -> Admin | None:
    return session.scalar(select(Admin).where(Admin.email == email, Admin.subject.is_(None)))


def _new_oidc_admin(session: Session, identity: OidcIdentity) -> Admin:
    username = identity.email
    if find(session, username) is not None:
        username = f"{identity.email}#{identity.subject}"[:255]
    admin = Admin(username=username, email=identity.email)
    session.add(admin)
    return admin


def disable(session: Session, username: str) -> Admin:
    """Disable an admin (kept for the audit trail). The caller commits."""
    admin = find(session, username)
    if admin is None:
        raise AdminError(f"no admin named '{username}'")
    admin.disabled = True
    return admin


def all_admins(session: Session) -> list[Admin]:
    return list(session.scalars(select(Admin).order_by(Admin.username)))
