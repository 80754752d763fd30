"""Waiting for something that happens in another process (a worker), with a readable failure."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last value {value!r}")
        time.sleep(interval)
        value = probe()
    return value
