"""A running lab's desktop endpoints, kept sealed with the lab so the tunnel never calls a backend.

Workers ask the connector for the endpoints when a lab reaches `running` (after provisioning and after
every resume, since a backend may move a lab) and seal them with the vault: they hold VM passwords and
keys. Only the tunnel opens them; what a browser may see of them is `public_hosts`.
"""

from __future__ import annotations

from dataclasses import asdict

from broker.connector import DesktopEndpoint
from broker.secrets import Vault


def seal(vault: Vault, endpoints: list[DesktopEndpoint]) -> bytes:
    return vault.seal({"endpoints": [asdict(endpoint) for endpoint in endpoints]})


def unseal(vault: Vault, sealed: bytes | None) -> list[DesktopEndpoint]:
    """The endpoints, default first; an empty list when the lab has none (not running)."""
    return [DesktopEndpoint(**item) for item in vault.open(sealed).get("endpoints", [])]


def find(endpoints: list[DesktopEndpoint], name: str) -> DesktopEndpoint | None:
    """The endpoint called `name`, or the default one for an empty name."""
    if not name:
        return endpoints[0] if endpoints else None
    return next((endpoint for endpoint in endpoints if endpoint.name == name), None)


def public_hosts(endpoints: list[DesktopEndpoint]) -> list[dict[str, str]]:
    """Name and protocol of each host, for the host selector: no address, port or credential."""
    return [{"name": endpoint.name, "protocol": endpoint.protocol} for endpoint in endpoints]
