"""The platforms' public keys, fetched from their JWKS URLs and cached per process.

A key id (`kid`) the cache does not know triggers one refetch, since platforms rotate keys and publish the
new one before they use it; a `kid` still unknown after a refetch is remembered for a minute, so a flood of
forged tokens cannot turn LabDesk into a JWKS-fetching amplifier.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from jwt.algorithms import RSAAlgorithm

UNKNOWN_KID_MEMORY = 60.0


class KeySetError(Exception):
    """The platform's key set could not be fetched or read."""


@dataclass
class _Entry:
    keys: dict[str, Any]
    fetched_at: float
    unknown: dict[str, float] = field(default_factory=dict)


class PlatformKeys:
    """A per-process JWKS cache shared by the web's threads."""

    def __init__(self, ttl: float, timeout: float) -> None:
        self.ttl, self.timeout = ttl, timeout
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str | None) -> Any:
        """The RSA public key for `kid` at `url`; refetches once if the cached set does not hold it."""
        entry = self._entries.get(url)
        now = time.monotonic()
        if entry is None or now - entry.fetched_at > self.ttl:
            entry = self._fetch(url)
        found = _pick(entry.keys, kid)
        if found is not None:
            return found
        if now - entry.unknown.get(kid or "", -UNKNOWN_KID_MEMORY) < UNKNOWN_KID_MEMORY:
            return None
        entry = self._fetch(url)
        found = _pick(entry.keys, kid)
        if found is None:
            entry.unknown[kid or ""] = time.monotonic()
        return found

    def _fetch(self, url: str) -> _Entry:
        try:
            response = requests.get(url, timeout=self.timeout, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, json.JSONDecodeError) as exc:
            raise KeySetError(f"could not fetch the platform's key set from {url}: {exc}") from None
        entry = _Entry(_parse(document), time.monotonic())
        with self._lock:
            self._entries[url] = entry
        return entry


def _parse(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError("the platform's key set is not a JWKS document")
    keys: dict[str, Any] = {}
    for jwk in document["keys"]:
        if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and jwk.get("use", "sig") == "sig":
            try:
                keys[str(jwk.get("kid", ""))] = RSAAlgorithm.from_jwk(jwk)
            except (ValueError, KeyError, TypeError):
                continue  # one malformed key must not hide the others
    return keys


def _pick(keys: dict[str, Any], kid: str | None) -> Any:
    """A token without `kid` is accepted only when the set holds a single key."""
    if kid is None:
        return next(iter(keys.values())) if len(keys) == 1 else None
    return keys.get(kid)
