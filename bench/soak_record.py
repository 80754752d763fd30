"""What `bench.soak` records per endpoint: how many calls, how many failed (with the first few messages),
and their latencies, for p50/p99.

Why its own module: the learners only say "this call took so long" or "this call failed, because"; what
counts as an error and how percentiles are read is decided here, once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

FIRST_MESSAGES = 5


@dataclass
class Endpoint:
    latencies: list[float] = field(default_factory=list)  # seconds, of the calls that succeeded
    errors: int = 0
    messages: list[str] = field(default_factory=list)


class Recorder:
    """Per-endpoint counts, errors and latencies; safe to call from the driver's threads and its loop."""

    def __init__(self, names: list[str]) -> None:
        self.endpoints = {name: Endpoint() for name in names}  # every endpoint is printed, even if never called
        self._lock = threading.Lock()

    def ok(self, name: str, seconds: float) -> None:
        with self._lock:
            self.endpoints[name].latencies.append(seconds)

    def error(self, name: str, message: str) -> None:
        with self._lock:
            endpoint = self.endpoints[name]
            endpoint.errors += 1
            if len(endpoint.messages) < FIRST_MESSAGES:
                endpoint.messages.append(message[:300])

    def total_errors(self) -> int:
        return sum(e.errors for e in self.endpoints.values())

    def figures(self) -> list[tuple[str, object, str]]:
        """Per endpoint: `<name>_count`, `<name>_errors`, `<name>_p50`, `<name>_p99` (ms)."""
        rows: list[tuple[str, object, str]] = []
        for name, endpoint in self.endpoints.items():
            calls = len(endpoint.latencies) + endpoint.errors
            rows += [
                (f"{name}_count", calls, "calls"),
                (f"{name}_errors", endpoint.errors, "calls"),
                (f"{name}_p50", round(percentile(endpoint.latencies, 50) * 1000, 1), "ms"),
                (f"{name}_p99", round(percentile(endpoint.latencies, 99) * 1000, 1), "ms"),
            ]
        return rows

    def messages(self) -> list[str]:
        return [f"{name}: {message}" for name, e in self.endpoints.items() for message in e.messages]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]
