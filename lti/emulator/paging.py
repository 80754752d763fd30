"""Paging for service containers (line items, results, memberships): `limit` and an opaque offset,
with the next page announced in a `Link: <…>; rel="next"` header, as the LTI services specify."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlencode

from flask import request

from lti.emulator.errors import ServiceError

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_url: str  # "" on the last page


def page(items: Sequence[Any], page_url: str, default_limit: int | None) -> Page:
    """The slice of `items` the request asks for, and the URL of the next slice ("" on the last page).
    `page_url` is the collection's absolute URL; the request's other query parameters are carried over."""
    limit = _number("limit", default_limit)
    offset = _number("from", 0) or 0
    if limit is None:
        return Page(list(items[offset:]), "")
    chosen = list(items[offset:offset + limit])
    if offset + limit >= len(items):
        return Page(chosen, "")
    query = {**request.args.to_dict(), "limit": str(limit), "from": str(offset + limit)}
    return Page(chosen, f"{page_url}?{urlencode(query)}")


def _number(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    lowest = 1 if name == "limit" else 0
    if not raw.isdigit() or not lowest <= int(raw) <= (MAX_LIMIT if name == "limit" else 10**9):
        raise ServiceError(f"{name} must be a whole number of at least {lowest}, got {raw!r}")
    return int(raw)


def link_header(result: Page) -> dict[str, str]:
    return {"Link": f'<{result.next_url}>; rel="next"'} if result.next_url else {}
