"""How a catalogue image reads in the instructor's lab picker.

`images.spec` holds the normalized catalogue entry (`broker.catalogue`, `desktop-images/README.md`). It is
still read defensively, since rows written before the catalogue format, or by hand, may hold anything: a
key that is missing, or holds something of the wrong kind, is left out or falls back to a default instead
of breaking the picker. The keys read here:

- `resources`: a mapping with any of `vcpu`, `ram_mb`, `disk_gb` (numbers) and `gpu` (true, or a model
  name); only what is present is shown.
- `checks`: a list of `{"title": str, "weight": number}`; entries without a title are skipped, a missing
  weight counts as 0.
- `max_score`: a positive number; else the sum of the check weights; else 10.
- `defaults.idle_suspend_after`: seconds of idleness before a lab is suspended; default
  `settings.idle_suspend_after`.
- `defaults.reap_after_days`: days unused before a lab is deleted; default `settings.reap_after_days`.
  (Both are also read at the top level of the spec, where rows from before the catalogue format kept them.)

Only the newest version of each slug is offered, since a new link should start on the current image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.models import Backend, Image

DEFAULT_MAX_SCORE = 10.0


@dataclass(frozen=True)
class Check:
    title: str
    weight: float


@dataclass(frozen=True)
class LabCard:
    """One lab as the picker shows it, and what its content item is built from."""

    slug: str
    version: int
    title: str
    description: str
    protocol: str
    resources: tuple[str, ...]
    checks: tuple[Check, ...]
    max_score: float
    idle_suspend_after: int
    reap_after_days: int


def newest_images(db: Session) -> list[Image]:
    """The newest version of every slug, by title."""
    newest = select(Image.slug, func.max(Image.version).label("version")).group_by(Image.slug).subquery()
    query = select(Image).join(newest, (Image.slug == newest.c.slug) & (Image.version == newest.c.version))
    return list(db.scalars(query.order_by(Image.title, Image.slug)))


def card(image: Image, settings: Settings) -> LabCard:
    spec = image.spec if isinstance(image.spec, dict) else {}
    checks = _checks(spec.get("checks"))
    return LabCard(
        slug=image.slug,
        version=image.version,
        title=image.title,
        description=image.description or "",
        protocol=(image.protocol or "").upper(),
        resources=_resources(spec.get("resources")),
        checks=checks,
        max_score=_max_score(spec.get("max_score"), checks),
        idle_suspend_after=_whole(entry_default(spec, "idle_suspend_after"), settings.idle_suspend_after),
        reap_after_days=_whole(entry_default(spec, "reap_after_days"), settings.reap_after_days),
    )


def catalogue(db: Session, settings: Settings) -> list[LabCard]:
    """The labs an instructor may pick: those that can run on the backend new activities use."""
    kind = db.scalar(select(Backend.kind).where(Backend.name == settings.default_backend))
    return [card(image, settings) for image in newest_images(db) if runs_on(image, kind)]


def runs_on(image: Image, kind: str | None) -> bool:
    """Whether the entry has artefacts for backends of `kind` (an entry from before the catalogue format,
    without `backends`, is assumed to run anywhere)."""
    backends = image.spec.get("backends") if isinstance(image.spec, dict) else None
    return not isinstance(backends, dict) or kind in backends


def number_text(value: float) -> str:
    """10.0 reads as "10"; a platform's score field and a person both prefer that."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def duration_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return _plural(seconds // 3600, "hour")
    if seconds % 60 == 0:
        return _plural(seconds // 60, "minute")
    return _plural(seconds, "second")


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def _number(value: Any) -> float | None:
    """A finite number, or None (booleans are not numbers here, though Python says they are)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def entry_default(spec: dict[str, Any], key: str) -> Any:
    """An entry's `defaults` value, or the top-level key of a spec from before the catalogue format."""
    defaults = spec.get("defaults")
    if isinstance(defaults, dict) and key in defaults:
        return defaults[key]
    return spec.get(key)


def _whole(value: Any, default: int) -> int:
    number = _number(value)
    return int(number) if number is not None and number > 0 else default


def _resources(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        return ()
    shown = []
    for key, unit in (("vcpu", "vCPU"), ("ram_mb", "MB RAM"), ("disk_gb", "GB disk")):
        number = _number(raw.get(key))
        if number is not None and number > 0:
            shown.append(f"{number_text(number)} {unit}")
    gpu = raw.get("gpu")
    if gpu is True:
        shown.append("GPU")
    elif isinstance(gpu, str) and gpu.strip():
        shown.append(f"GPU: {gpu.strip()}")
    return tuple(shown)


def _checks(raw: Any) -> tuple[Check, ...]:
    if not isinstance(raw, list):
        return ()
    checks = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("title"), str) and item["title"].strip():
            weight = _number(item.get("weight"))
            checks.append(Check(item["title"].strip(), weight if weight is not None and weight > 0 else 0.0))
    return tuple(checks)


def _max_score(raw: Any, checks: tuple[Check, ...]) -> float:
    stated = _number(raw)
    if stated is not None and stated > 0:
        return stated
    return sum(check.weight for check in checks) or DEFAULT_MAX_SCORE
