"""One source of "now", so the cost simulation can drive the real code with a simulated clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Callable

_now: Callable[[], datetime] | None = None


def utcnow() -> datetime:
    """Naive UTC now (the database stores naive UTC), or the simulated time while one is set."""
    if _now is not None:
        return _now()
    return datetime.now(UTC).replace(tzinfo=None)


def set_clock(now: Callable[[], datetime] | None) -> None:
    """Replace the clock (simulation and tests); None restores the real one."""
    global _now
    _now = now
