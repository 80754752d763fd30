"""Catalogue use cases: validate entries, import them as versioned images, list, show and remove.

Importing is all-or-nothing per run: every file is validated first, and one bad entry imports nothing.
An entry whose digest (sha256 of its normalized JSON) equals the newest version of its id changes
nothing; a changed entry becomes version N+1 beside the old ones. An activity points at one image row,
so it keeps the version it was created with; a version still in use cannot be removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.catalogue import CatalogueError, Entry, load, shown
from broker.errors import LabDeskError
from broker.models import Activity, Image
from broker.runtime import Runtime
from broker.services import NotFound

SHIPPED = Path(__file__).resolve().parent.parent / "desktop-images" / "catalogue"


@dataclass(frozen=True)
class Imported:
    """What an import did with one entry: `added` (version 1), `updated` (a new version) or `unchanged`."""

    id: str
    version: int
    status: str
    file: str


def entry_files(targets: Iterable[str | Path] = ()) -> list[Path]:
    """The entry files named: FILEs as given, every `*.toml` of a DIR (or of DIR/catalogue), by name;
    nothing named means the shipped catalogue."""
    files: list[Path] = []
    for target in [Path(t) for t in targets] or [SHIPPED]:
        if target.is_dir():
            found = sorted(target.glob("*.toml")) or sorted((target / "catalogue").glob("*.toml"))
            if not found:
                raise CatalogueError([f"{shown(target)}: (directory): no *.toml entries in it"])
            files.extend(found)
        elif target.is_file():
            files.append(target)
        else:
            raise CatalogueError([f"{shown(target)}: (file): no such file or directory"])
    unique = {path.resolve(): path for path in files}
    return list(unique.values())


def validate(targets: Iterable[str | Path] = ()) -> list[tuple[Path, Entry]]:
    """Every entry named, validated; CatalogueError lists the problems of all files, one per line."""
    problems: list[str] = []
    entries: list[tuple[Path, Entry]] = []
    first_file: dict[str, Path] = {}
    for path in entry_files(targets):
        try:
            entry = load(path)
        except CatalogueError as exc:
            problems.extend(exc.problems)
            continue
        if entry.id in first_file:
            problems.append(f"{shown(path)}: id: duplicate id \"{entry.id}\" (also {shown(first_file[entry.id])})")
            continue
        first_file[entry.id] = path
        entries.append((path, entry))
    if problems:
        raise CatalogueError(problems)
    return entries


def import_entries(rt: Runtime, targets: Iterable[str | Path] = ()) -> list[Imported]:
    """Validate everything named, then import it in one transaction."""
    entries = validate(targets)
    with rt.session() as session:
        results = [_import_one(session, path, entry) for path, entry in entries]
        try:
            session.commit()
        except IntegrityError:
            raise LabDeskError("another import added a version at the same time; run the import again") from None
    return results


def _import_one(session: Session, path: Path, entry: Entry) -> Imported:
    newest = _newest(session, entry.id)
    digest = entry.digest()
    if newest is not None and newest.digest == digest:
        return Imported(entry.id, newest.version, "unchanged", shown(path))
    version = newest.version + 1 if newest is not None else 1
    session.add(Image(
        slug=entry.id, version=version, title=entry.title, description=entry.description,
        protocol=entry.protocol, spec=entry.spec(), digest=digest,
    ))
    session.flush()
    return Imported(entry.id, version, "added" if newest is None else "updated", shown(path))


def _newest(session: Session, slug: str) -> Image | None:
    return session.scalar(select(Image).where(Image.slug == slug).order_by(Image.version.desc()).limit(1))


def _summary(image: Image, used_by: int) -> dict[str, Any]:
    spec = image.spec if isinstance(image.spec, dict) else {}
    return {
        "id": image.slug, "version": image.version, "title": image.title, "protocol": image.protocol,
        "backends": sorted(spec.get("backends", {})), "tags": spec.get("tags", []), "activities": used_by,
        "digest": image.digest, "created_at": image.created_at,
    }


def _usage(session: Session) -> dict[int, int]:
    rows = session.execute(select(Activity.image_id, func.count()).group_by(Activity.image_id))
    return {image_id: count for image_id, count in rows}


def list_images(rt: Runtime, all_versions: bool = False) -> list[dict[str, Any]]:
    """The newest version of every image (or every version), by id then version."""
    with rt.session() as session:
        images = session.scalars(select(Image).order_by(Image.slug, Image.version)).all()
        usage = _usage(session)
        if not all_versions:
            newest = {image.slug: image for image in images}
            images = list(newest.values())
        return [_summary(image, usage.get(image.id, 0)) for image in images]


def show_image(rt: Runtime, slug: str, version: int | None = None) -> dict[str, Any]:
    """One version (the newest by default): its summary, the versions beside it, the activities on it
    and the normalized entry."""
    with rt.session() as session:
        image = _find(session, slug, version)
        versions = session.scalars(select(Image.version).where(Image.slug == slug).order_by(Image.version)).all()
        activities = session.scalars(select(Activity).where(Activity.image_id == image.id).order_by(Activity.id)).all()
        data = _summary(image, len(activities))
        data.update(
            description=image.description, versions=list(versions),
            used_by=[{"id": a.id, "title": a.title, "course": a.course.title} for a in activities],
            spec=image.spec,
        )
        return data


def _find(session: Session, slug: str, version: int | None) -> Image:
    query = select(Image).where(Image.slug == slug)
    image = session.scalar(query.where(Image.version == version) if version is not None else query.order_by(Image.version.desc()).limit(1))
    if image is None:
        raise NotFound(f"no image {slug}" + (f" version {version}" if version is not None else ""))
    return image


def remove_image(rt: Runtime, slug: str, version: int | None = None) -> list[int]:
    """Remove one version, or every version of `slug`; refuses, removing nothing, while an activity
    still uses a version it would remove. Returns the versions removed."""
    with rt.session() as session:
        doomed = [_find(session, slug, version)] if version is not None else list(
            session.scalars(select(Image).where(Image.slug == slug).order_by(Image.version))
        )
        if not doomed:
            raise NotFound(f"no image {slug}")
        for image in doomed:
            _refuse_if_used(session, image)
        for image in doomed:
            session.delete(image)
        session.commit()
        return [image.version for image in doomed]


def _refuse_if_used(session: Session, image: Image) -> None:
    titles = session.scalars(select(Activity.title).where(Activity.image_id == image.id).order_by(Activity.id)).all()
    if titles:
        count = f"{len(titles)} activit{'y' if len(titles) == 1 else 'ies'}"
        named = ", ".join(f'"{t}"' for t in titles[:3]) + (", …" if len(titles) > 3 else "")
        raise LabDeskError(
            f"image {image.slug} version {image.version} is used by {count} ({named}); "
            "it stays until no activity uses it"
        )
