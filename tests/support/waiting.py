"""Waiting for something that happens in another process (a worker), with a readable failure."""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

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


def lab_row(rt: Any, lab_id: int) -> Any:
    """The lab's row as it is now in the database (a fresh session: workers change it)."""
    from broker.models import Lab

    with rt.session() as session:
        found = session.get(Lab, lab_id)
        assert found is not None, f"lab {lab_id} is gone"
        return found


def wait_state(rt: Any, lab_id: int, state: Any, timeout: float = 60, interval: float = 0.2) -> Any:
    """Wait until a worker has moved the lab to `state` (a LabState); its row then."""
    wait_until(lambda: lab_row(rt, lab_id).state == state.value, timeout=timeout, interval=interval, what=f"lab {lab_id} {state.value}")
    return lab_row(rt, lab_id)
