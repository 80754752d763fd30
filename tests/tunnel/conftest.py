"""Fixtures for the tunnel tests: guacd doubles speaking the real protocol on real TCP sockets."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from tests.support.guacd_double import GuacdDouble, guacd_doubles


@pytest.fixture
def start_guacd_double() -> Iterator[Callable[..., GuacdDouble]]:
    """Start doubles with any `GuacdDouble` options; all are stopped after the test."""
    with guacd_doubles() as start:
        yield start


@pytest.fixture
def guacd_double(start_guacd_double: Callable[..., GuacdDouble]) -> GuacdDouble:
    """A double with quick syncs (every 0.2 s) and guacd's own 15 s silence rule."""
    return start_guacd_double(sync_interval=0.2)
