"""Connector classes by name, from the `labdesk.connectors` entry points (plugins register themselves).

A connector whose SDK is not installed on this host (libvirt-python is an extra: the demo has no
compiler for it) must not stop the others: it is left out, and asking for it says what is missing.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from broker.connector import Connector
from broker.errors import UnknownBackend

GROUP = "labdesk.connectors"


@cache
def _load() -> tuple[dict[str, type[Connector]], dict[str, str]]:
    """The connector classes that import, and why each of the others does not."""
    kinds: dict[str, type[Connector]] = {}
    missing: dict[str, str] = {}
    for point in entry_points(group=GROUP):
        try:
            kinds[point.name] = point.load()
        except ImportError as exc:
            missing[point.name] = str(exc)
    return kinds, missing


def connector_kinds() -> dict[str, type[Connector]]:
    """Every installed connector class that can load here, by entry-point name."""
    return _load()[0]


def connector_class(kind: str) -> type[Connector]:
    """The class registered as `kind`, or UnknownBackend saying what is missing or which kinds exist."""
    kinds, missing = _load()
    if kind in missing:
        raise UnknownBackend(
            f"connector kind '{kind}' cannot load on this host: {missing[kind]} "
            f"(install its extra, e.g. pip install 'labdesk[{kind}]')"
        )
    if kind not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise UnknownBackend(f"no connector kind '{kind}' is installed (installed: {known})")
    return kinds[kind]
