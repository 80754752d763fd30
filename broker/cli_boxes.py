"""`labdesk boxes add|list|remove`: the machine images (Vagrant boxes) a backend's labs start from.

Boxes live on the backend's own host (a vagrant backend's VAGRANT_HOME), not in the database, so these
commands must run on the host whose workers serve that backend: they call the connector here and now.
A backend whose connector keeps no images answers Unsupported, printed as one `error:` line.
"""

from __future__ import annotations

from dataclasses import asdict
import click
from sqlalchemy import select

from broker.cli import emit, fails_cleanly, json_option, rt
from broker.connector import Box, Connector
from broker.errors import LabDeskError
from broker.models import Backend

ON_THE_HOST = "Run it on the host whose workers serve BACKEND: its boxes are local to that host."


def _connector(name: str) -> Connector:
    """The live connector of backend `name`, with its credentials decrypted, as a worker would build it."""
    runtime = rt()
    with runtime.session() as session:
        backend = session.scalar(select(Backend).where(Backend.name == name))
        if backend is None:
            raise LabDeskError(f"no backend named '{name}'")
        return runtime.connector(backend)


def _line(box: Box) -> str:
    return f"{box.name:<32} {box.version:<12} {box.provider}"


@click.group("boxes", help=f"Machine images (Vagrant boxes) of a backend's labs. {ON_THE_HOST}")
def boxes_group() -> None:
    """(The help above names the host these must run on.)"""


@boxes_group.command("add", help="Install box NAME on BACKEND from SOURCE: a local box file or metadata .json, "
                     f"or an http(s)/file URL. A box file has no version (it is 0); versions come from metadata. {ON_THE_HOST}")
@click.argument("backend")
@click.argument("name")
@click.argument("source")
@click.option("--version", help="The version to take from a metadata .json source.")
@click.option("--force", is_flag=True, help="Replace an installed box of the same name and version.")
@json_option
@fails_cleanly
def boxes_add(backend: str, name: str, source: str, version: str | None, force: bool, as_json: bool) -> None:
    box = _connector(backend).add_box(name, source, version=version, force=force)
    emit(asdict(box), as_json, lambda b: [f"added box {b['name']} {b['version']} ({b['provider']}) to {backend}"])


@boxes_group.command("list", help=f"The boxes installed for BACKEND. {ON_THE_HOST}")
@click.argument("backend")
@json_option
@fails_cleanly
def boxes_list(backend: str, as_json: bool) -> None:
    found = _connector(backend).boxes()
    emit([asdict(box) for box in found], as_json,
         lambda rows: [_line(Box(**row)) for row in rows] or [f"no boxes on {backend}"])


@boxes_group.command("remove", help="Remove box NAME (every version, or --version) from BACKEND; refused while a "
                     f"lab of BACKEND uses it, unless --force. {ON_THE_HOST}")
@click.argument("backend")
@click.argument("name")
@click.option("--version", help="Remove only this version.")
@click.option("--force", is_flag=True, help="Remove it even while labs use it.")
@json_option
@fails_cleanly
def boxes_remove(backend: str, name: str, version: str | None, force: bool, as_json: bool) -> None:
    removed = _connector(backend).remove_box(name, version=version, force=force)
    emit([asdict(box) for box in removed], as_json,
         lambda rows: [f"removed box {r['name']} {r['version']} ({r['provider']}) from {backend}" for r in rows])
