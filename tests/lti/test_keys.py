"""LabDesk's signing keys: what the JWKS publishes across rotations, and that private keys are sealed."""

from __future__ import annotations

import threading

import jwt
from sqlalchemy import select

from broker.runtime import Runtime
from lti import keys
from lti.models import ToolKey


def kids(rt: Runtime) -> list[str]:
    return [key["kid"] for key in keys.jwks(rt)["keys"]]


def test_the_jwks_publishes_the_current_and_the_next_key(rt: Runtime) -> None:
    published = keys.jwks(rt)["keys"]
    assert len(published) == 2 and all(k["kty"] == "RSA" and k["alg"] == "RS256" and "d" not in k for k in published)
    token = keys.signing_key(rt).sign({"hello": "platform"})
    header = jwt.get_unverified_header(token)
    public = jwt.algorithms.RSAAlgorithm.from_jwk(next(k for k in published if k["kid"] == header["kid"]))
    assert jwt.decode(token, public, algorithms=["RS256"]) == {"hello": "platform"}


def test_rotation_signs_with_the_key_platforms_already_know(rt: Runtime) -> None:
    first_current = keys.signing_key(rt).kid
    before = kids(rt)
    promoted = keys.rotate(rt)
    assert promoted in before and promoted != first_current  # the "next" key, published before it signs
    assert keys.signing_key(rt).kid == promoted
    after = kids(rt)
    assert first_current in after and len(after) == 3  # the previous key stays until the next rotation
    keys.rotate(rt)
    assert first_current not in kids(rt)


def test_private_keys_are_sealed_at_rest(rt: Runtime) -> None:
    keys.ensure_keys(rt)
    with rt.session() as db:
        for row in db.scalars(select(ToolKey)):
            assert b"PRIVATE KEY" not in row.private_key


def test_processes_creating_keys_at_once_make_one_current_key(rt: Runtime) -> None:
    threads = [threading.Thread(target=keys.ensure_keys, args=(rt,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with rt.session() as db:
        statuses = db.scalars(select(ToolKey.status)).all()
    assert sorted(statuses) == ["current", "next"]
