"""Who gets the next free GPU, where a waiting learner stands, and how long they will likely wait.

Pure functions over plain values, so the policy is tested and benchmarked without a database.

The policy (docs/gpus.md): **fair share between courses, first come first served within a course, and a
per-learner limit.** Each next GPU goes to the course that holds the fewest GPUs right now (counting the
ones this order has already handed out), ties going to the course whose next request is the oldest. Inside
a course requests are served in arrival order, except that a learner who already holds `per_learner` GPUs is
passed over; their request keeps its place and moves up once they let a GPU go. So one course's burst
of 300 launches cannot keep a small course waiting behind it, and no learner can hoard GPUs.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Waiting:
    """One lab waiting for a GPU."""

    request_id: int
    lab_id: int
    course_id: int
    user_id: int
    model: str  # "" takes any GPU
    requested_at: datetime


@dataclass(frozen=True)
class Order:
    """The service order of the waiting requests, and those passed over for their learner's limit."""

    served: tuple[Waiting, ...]
    blocked: tuple[Waiting, ...]


def service_order(
    waiting: Sequence[Waiting],
    held_by_course: Mapping[int, int],
    held_by_user: Mapping[int, int],
    per_learner: int,
) -> Order:
    """The order in which `waiting` get the next free GPUs, if every GPU were interchangeable."""
    queues: dict[int, list[Waiting]] = {}
    for request in sorted(waiting, key=lambda w: (w.requested_at, w.request_id)):
        queues.setdefault(request.course_id, []).append(request)
    courses, users = Counter(held_by_course), Counter(held_by_user)
    served: list[Waiting] = []
    while True:
        heads = [head for queue in queues.values() if (head := _next_allowed(queue, users, per_learner))]
        if not heads:
            break
        chosen = min(heads, key=lambda w: (courses[w.course_id], w.requested_at, w.request_id))
        queues[chosen.course_id].remove(chosen)
        courses[chosen.course_id] += 1
        users[chosen.user_id] += 1
        served.append(chosen)
    blocked = [request for queue in queues.values() for request in queue]
    return Order(tuple(served), tuple(sorted(blocked, key=lambda w: (w.requested_at, w.request_id))))


def _next_allowed(queue: list[Waiting], users: Counter[int], per_learner: int) -> Waiting | None:
    """The oldest request of a course whose learner is still under the limit."""
    return next((request for request in queue if users[request.user_id] < per_learner), None)


def compatible(wanted: str, model: str) -> bool:
    """Whether a unit of `model` serves a request for `wanted` ("" = any GPU)."""
    return not wanted or wanted == model


def position(order: Order, lab_id: int) -> int | None:
    """1 for the next in line among the requests that compete for the same GPUs; None if not served."""
    mine = next((w for w in order.served if w.lab_id == lab_id), None)
    if mine is None:
        return None
    ahead = 0
    for request in order.served:
        if request is mine:
            return ahead + 1
        if compatible(request.model, mine.model) or compatible(mine.model, request.model):
            ahead += 1
    return None  # pragma: no cover - `mine` is in `served`


def estimate_wait(place: int, held_for: Sequence[float], free_units: int, typical_hold: float) -> float:
    """Seconds until the request at `place` (1-based) gets a GPU.

    `held_for` is how long each busy unit has been held; a holder is expected to let go after
    `typical_hold` seconds in all (at once if already past it), and every unit then serves the next in
    line for `typical_hold` again. With no unit at all there is no estimate: infinity.
    """
    frees = [0.0] * free_units + [max(0.0, typical_hold - held) for held in held_for]
    if not frees:
        return float("inf")
    heapq.heapify(frees)
    when = 0.0
    for _ in range(place):
        when = heapq.heappop(frees)
        heapq.heappush(frees, when + typical_hold)
    return when
