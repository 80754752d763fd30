"""The platforms' key cache against a real JWKS endpoint over HTTP: rotation is followed, forged key ids
cannot make LabDesk fetch the key set once per attempt, and an unreachable platform is named."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from jwt.algorithms import RSAAlgorithm

from lti.platform_keys import KeySetError, PlatformKeys
from tests.support.http import LiveServer, free_port


class JwksPlatform:
    """A platform's JWKS endpoint that counts its fetches; `publish` rotates in a new key."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self.app = Flask(__name__)
        self.app.add_url_rule("/jwks", view_func=self._jwks)

    def publish(self, kid: str) -> Any:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = private.public_key()
        return private.public_key()

    def _jwks(self) -> Any:
        self.fetches += 1
        jwks = [{**json.loads(RSAAlgorithm.to_jwk(key)), "kid": kid, "use": "sig"} for kid, key in self.keys.items()]
        return {"keys": jwks}


@pytest.fixture
def platform() -> Iterator[tuple[JwksPlatform, LiveServer]]:
    jwks = JwksPlatform()
    server = LiveServer(jwks.app)
    yield jwks, server
    server.close()


def numbers(key: Any) -> Any:
    return key.public_numbers() if key is not None else None


def test_a_rotated_key_is_fetched_once_and_then_served_from_the_cache(platform: tuple[JwksPlatform, LiveServer]) -> None:
    jwks, server = platform
    url = f"{server.url}/jwks"
    first = jwks.publish("k1")
    cache = PlatformKeys(ttl=3600, timeout=5, refetch_interval=0)

    assert numbers(cache.key(url, "k1")) == first.public_numbers()
    assert numbers(cache.key(url, "k1")) == first.public_numbers()
    assert jwks.fetches == 1

    second = jwks.publish("k2")  # the platform rotates: the new kid appears before tokens use it
    assert numbers(cache.key(url, "k2")) == second.public_numbers()
    assert jwks.fetches == 2


def test_a_flood_of_forged_key_ids_costs_one_refetch_per_interval_not_one_per_token(
    platform: tuple[JwksPlatform, LiveServer],
) -> None:
    jwks, server = platform
    url = f"{server.url}/jwks"
    jwks.publish("k1")
    cache = PlatformKeys(ttl=3600, timeout=5, refetch_interval=60)
    cache.key(url, "k1")

    refused = [cache.key(url, f"forged-{n}") for n in range(200)]

    assert refused == [None] * 200
    assert jwks.fetches == 2  # one refetch for the first unknown kid; none for the next 199 within the interval


def test_unknown_kids_after_the_interval_refetch_again(platform: tuple[JwksPlatform, LiveServer]) -> None:
    jwks, server = platform
    url = f"{server.url}/jwks"
    jwks.publish("k1")
    cache = PlatformKeys(ttl=3600, timeout=5, refetch_interval=0)
    cache.key(url, "k1")

    assert cache.key(url, "never-published") is None
    assert cache.key(url, "never-published-either") is None
    assert jwks.fetches == 3


def test_an_unreachable_key_set_is_named_in_the_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"
    cache = PlatformKeys(ttl=3600, timeout=2)

    with pytest.raises(KeySetError, match=f"could not fetch the platform's key set from {url}"):
        cache.key(url, "k1")
