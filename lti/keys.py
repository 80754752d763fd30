"""LabDesk's own signing keys and the JWKS that platforms fetch to verify what LabDesk signs.

The JWKS always publishes the current key and the next one, so a platform that caches it already knows the
key a rotation promotes; the key a rotation retires stays published until the rotation after.
Private keys are sealed with the broker's vault at rest.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker.runtime import Runtime
from lti.models import ToolKey

PUBLISHED = ("current", "next", "previous")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: bytes

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private_pem, algorithm="RS256", headers={"kid": self.kid})


def _new_key(rt: Runtime, status: str) -> ToolKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    kid = secrets.token_urlsafe(12)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public.update(kid=kid, alg="RS256", use="sig")
    return ToolKey(kid=kid, status=status, private_key=rt.vault.seal({"pem": pem.decode()}), public_jwk=public)


def ensure_keys(rt: Runtime) -> None:
    """Create the current and next key on first use (safe to call from several processes at once)."""
    with rt.session() as session:
        have = set(session.scalars(select(ToolKey.status).where(ToolKey.status.in_(("current", "next")))))
        for status in ("current", "next"):
            if status not in have:
                session.add(_new_key(rt, status))
        try:
            session.commit()
        except IntegrityError:  # another process made them first
            session.rollback()


def rotate(rt: Runtime) -> str:
    """Promote the next key to current, keep the old current as previous, and make a new next key."""
    ensure_keys(rt)
    with rt.session() as session:
        by_status = {key.status: key for key in session.scalars(select(ToolKey).where(ToolKey.status.in_(PUBLISHED)))}
        if "previous" in by_status:
            by_status["previous"].status = "retired"
        by_status["current"].status = "previous"
        session.flush()  # one status at a time: the unique index allows a single current and next
        by_status["next"].status = "current"
        session.flush()
        session.add(_new_key(rt, "next"))
        session.commit()
        return by_status["next"].kid


def jwks(rt: Runtime) -> dict[str, Any]:
    """The public key set platforms verify LabDesk's signatures with."""
    ensure_keys(rt)
    with rt.session() as session:
        keys = session.scalars(select(ToolKey).where(ToolKey.status.in_(PUBLISHED)).order_by(ToolKey.id)).all()
        return {"keys": [key.public_jwk for key in keys]}


def signing_key(rt: Runtime) -> SigningKey:
    """The key LabDesk signs with now."""
    ensure_keys(rt)
    with rt.session() as session:
        key = session.scalar(select(ToolKey).where(ToolKey.status == "current"))
        assert key is not None
        return SigningKey(key.kid, rt.vault.open(key.private_key)["pem"].encode())


def listing(rt: Runtime) -> list[dict[str, Any]]:
    """Every key with its status, for `labdesk keys list` (never the private part)."""
    with rt.session() as session:
        keys = session.scalars(select(ToolKey).order_by(ToolKey.id)).all()
        return [{"kid": k.kid, "status": k.status, "created_at": k.created_at.isoformat()} for k in keys]
