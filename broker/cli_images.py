"""`labdesk images …`: validate, import, list, show and remove catalogue images (see broker.images).

With no DIR or FILE, `validate` and `import` read the shipped catalogue (`desktop-images/catalogue/`).
An invalid catalogue prints every problem as its own `error: <file>: <key>: <reason>` line and exits 1.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from broker import images
from broker.catalogue import CatalogueError, shown
from broker.cli import emit, fails_cleanly, json_option, rt


def reports_every_problem(command: Callable[..., Any]) -> Callable[..., Any]:
    """Like `fails_cleanly`, but a catalogue with several problems shows them all, one line each."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CatalogueError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            sys.exit(1)

    return fails_cleanly(wrapper)


targets_argument = click.argument("targets", nargs=-1, type=click.Path(), metavar="[DIR|FILE]...")


@click.group("images")
def images_group() -> None:
    """The image catalogue: validate, import, list, show, remove."""


@images_group.command("validate")
@targets_argument
@json_option
@reports_every_problem
def images_validate(targets: tuple[str, ...], as_json: bool) -> None:
    """Check catalogue entries without touching the database."""
    rows = [{"id": entry.id, "file": shown(path), "backends": list(entry.backends.names())}
            for path, entry in images.validate(targets)]
    emit(rows, as_json, lambda rs: [f"ok  {r['id']:<20} {r['file']}" for r in rs] + [f"{len(rs)} valid entries"])


@images_group.command("import")
@targets_argument
@json_option
@reports_every_problem
def images_import(targets: tuple[str, ...], as_json: bool) -> None:
    """Import entries: unchanged ones stay, changed ones become a new version; all or nothing."""
    rows = [vars(result) for result in images.import_entries(rt(), targets)]
    emit(rows, as_json, lambda rs: [_import_line(r) for r in rs])


def _import_line(row: dict[str, Any]) -> str:
    what = {"added": "added as version", "updated": "updated to version", "unchanged": "unchanged at version"}
    return f"{row['id']:<20} {what[row['status']]} {row['version']}"


@images_group.command("list")
@click.option("--all-versions", is_flag=True, help="Every version, not only the newest.")
@json_option
@fails_cleanly
def images_list(all_versions: bool, as_json: bool) -> None:
    """List images (the newest version of each)."""
    rows = images.list_images(rt(), all_versions)
    emit(rows, as_json, lambda rs: [
        f"{r['id']:<20} v{r['version']:<3} {r['protocol']:<6} {','.join(r['backends']):<24} {r['title']}" for r in rs
    ])


@images_group.command("show")
@click.argument("image_id", metavar="ID")
@click.option("--version", type=click.IntRange(min=1), help="This version (default: the newest).")
@json_option
@fails_cleanly
def images_show(image_id: str, version: int | None, as_json: bool) -> None:
    """One image version with the activities that use it."""
    emit(images.show_image(rt(), image_id, version), as_json, _show_lines)


def _show_lines(d: dict[str, Any]) -> list[str]:
    spec = d["spec"]
    hosts = [f"  {h['name']}: " + ", ".join(f"{p['protocol']}/{p['port']}" for p in h["ports"]) for h in spec.get("hosts", [])]
    return [
        f"id: {d['id']}", f"version: {d['version']} (versions: {', '.join(map(str, d['versions']))})",
        f"title: {d['title']}", f"protocol: {d['protocol']}", f"backends: {', '.join(d['backends'])}",
        f"digest: {d['digest']}", "hosts:", *hosts,
        f"used by: {', '.join(a['title'] for a in d['used_by']) or 'no activity'}",
    ]


@images_group.command("remove")
@click.argument("image_id", metavar="ID")
@click.option("--version", type=click.IntRange(min=1), help="Only this version (default: every version).")
@fails_cleanly
def images_remove(image_id: str, version: int | None) -> None:
    """Remove an image version, or all its versions; refused while an activity uses one."""
    removed = images.remove_image(rt(), image_id, version)
    click.echo(f"removed {image_id} version{'s' if len(removed) > 1 else ''} {', '.join(map(str, removed))}")
