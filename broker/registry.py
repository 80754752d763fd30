"""Connector classes by name, from the `labdesk.connectors` entry points (plugins register themselves)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from broker.connector import Connector
from broker.errors import UnknownBackend

GROUP = "labdesk.connectors"


@cache
def connector_kinds() -> dict[str, type[Connector]]:
    """Every installed connector class, by entry-point name."""
    return {ep.name: ep.load() for ep in entry_points(group=GROUP)}


def connector_class(kind: str) -> type[Connector]:
    """The class registered as `kind`, or UnknownBackend listing the kinds that exist."""
    kinds = connector_kinds()
    if kind not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise UnknownBackend(f"no connector kind '{kind}' is installed (installed: {known})")
    return kinds[kind]
