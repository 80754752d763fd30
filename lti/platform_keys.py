"""The platforms' public keys, fetched from their JWKS URLs and cached per process.

A key id (`kid`) the cache does not know triggers a refetch, since platforms rotate keys and publish the
new one before (or as) they use it. After such a refetch, another one for an unknown `kid` waits
`REFETCH_INTERVAL`, whatever the `kid`: a flood of forged tokens, each naming a new `kid`, costs one fetch
per interval, so it cannot turn LabDesk into a JWKS-fetching amplifier (remembering only the `kid`s already
tried did not bound it). A genuine rotation is followed at once, since the set it finds was not itself
fetched for an unknown `kid`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from jwt.algorithms import RSAAlgorithm

REFETCH_INTERVAL = 10.0


class KeySetError(Exception):
    """The platform's key set could not be fetched or read."""


@dataclass
class _Entry:
    keys: dict[str, Any]
    fetched_at: float
    for_unknown_kid: bool = False


class PlatformKeys:
    """A per-process JWKS cache shared by the web's threads."""

    def __init__(self, ttl: float, timeout: float, refetch_interval: float = REFETCH_INTERVAL) -> None:
        self.ttl, self.timeout, self.refetch_interval = ttl, timeout, refetch_interval
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str | None) -> Any:
        """The RSA public key for `kid` at `url`, or None; refetches the set if it does not hold `kid`,
        unless the set was itself refetched for an unknown `kid` less than the refetch interval ago."""
        entry = self._entries.get(url)
        if entry is None or time.monotonic() - entry.fetched_at > self.ttl:
            entry = self._fetch(url)
        found = _pick(entry.keys, kid)
        if found is not None or (entry.for_unknown_kid and time.monotonic() - entry.fetched_at < self.refetch_interval):
            return found
        return _pick(self._fetch(url, for_unknown_kid=True).keys, kid)

    def _fetch(self, url: str, for_unknown_kid: bool = False) -> _Entry:
        try:
            response = requests.get(url, timeout=self.timeout, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, json.JSONDecodeError) as exc:
            raise KeySetError(f"could not fetch the platform's key set from {url}: {exc}") from None
        entry = _Entry(_parse(document), time.monotonic(), for_unknown_kid)
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
