"""Lab-hours and their estimated cost, per course and per backend, and over time, from the lab event history.

A lab is *running* from the event that moves it into `running` until the next event that moves it
elsewhere, and *suspended* likewise for `suspended`; a lab still in a state counts up to now. Every
interval is clipped to the period asked for, so a lab that started running before the period and still
runs after it counts exactly the period. Only `lab_events` is read for the intervals (not the labs'
current columns), so what an admin sees for last month does not change as labs move on today.

Cost is an estimate: running hours × the backend's `hourly_price` plus suspended hours × its
`suspended_hourly_price`. A price an admin has not set is unknown, not free: the cost it would take is
None, and so is every total it is part of.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Iterator, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.lifecycle import LabState
from broker.models import Activity, Backend, Course, Lab, LabEvent

COUNTED = (LabState.RUNNING.value, LabState.SUSPENDED.value)
Bucket = Literal["hour", "day"]
BUCKET_SIZE = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class Interval:
    """A stretch of one lab in one counted state (already clipped to the period)."""

    lab_id: int
    course_id: int
    backend_id: int
    state: str  # "running" or "suspended"
    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


@dataclass(frozen=True)
class Prices:
    hourly: float | None
    suspended_hourly: float | None


@dataclass(frozen=True)
class UsageRow:
    """Lab-hours of one course or one backend over the period, with what they cost when prices are known."""

    key: int
    name: str
    running_hours: float
    suspended_hours: float
    running_cost: float | None
    suspended_cost: float | None

    @property
    def cost(self) -> float | None:
        """The total, or None when a part of it has no price."""
        if self.running_cost is None or self.suspended_cost is None:
            return None
        return self.running_cost + self.suspended_cost


@dataclass(frozen=True)
class SeriesPoint:
    """One bucket of the usage chart: lab-hours that fall inside [start, start + bucket)."""

    start: datetime
    running_hours: float
    suspended_hours: float


@dataclass(frozen=True)
class Usage:
    start: datetime
    end: datetime
    by_course: list[UsageRow]
    by_backend: list[UsageRow]

    @property
    def running_hours(self) -> float:
        return sum(r.running_hours for r in self.by_backend)

    @property
    def suspended_hours(self) -> float:
        return sum(r.suspended_hours for r in self.by_backend)

    @property
    def cost(self) -> float | None:
        return _sum_or_none(r.cost for r in self.by_backend)


def report(session: Session, start: datetime, end: datetime) -> Usage:
    """Lab-hours per course and per backend in [start, end), split running vs suspended, with costs."""
    intervals = list(intervals_in(session, start, end))
    prices = _prices(session)
    per_pair: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: {s: 0.0 for s in COUNTED})
    for interval in intervals:
        per_pair[(interval.course_id, interval.backend_id)][interval.state] += interval.hours
    courses = dict(session.execute(select(Course.id, Course.title)).all())
    backends = dict(session.execute(select(Backend.id, Backend.name)).all())
    return Usage(
        start=start,
        end=end,
        by_course=_rows(per_pair, 0, courses, prices),
        by_backend=_rows(per_pair, 1, backends, prices),
    )


def series(session: Session, start: datetime, end: datetime, bucket: Bucket = "day") -> list[SeriesPoint]:
    """Lab-hours per hour or per day bucket for a chart; buckets start at `start` floored to the bucket
    unit (midnight or the hour, UTC), and each interval is split exactly at bucket edges."""
    size = BUCKET_SIZE[bucket]
    first = floor_to(start, bucket)
    count = max(0, -(-(end - first) // size))  # ceiling division of timedeltas
    running = [0.0] * count
    suspended = [0.0] * count
    for interval in intervals_in(session, start, end):
        totals = running if interval.state == LabState.RUNNING.value else suspended
        for index, piece_start, piece_end in _split(interval.start, interval.end, first, size):
            totals[index] += (piece_end - piece_start).total_seconds() / 3600
    return [SeriesPoint(first + i * size, running[i], suspended[i]) for i in range(count)]


def floor_to(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the hour or day (UTC) that holds `moment`."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return hour if bucket == "hour" else hour.replace(hour=0)


def intervals_in(session: Session, start: datetime, end: datetime) -> Iterator[Interval]:
    """Every running or suspended stretch of every lab, clipped to [start, min(end, now))."""
    stop = min(end, utcnow())
    if stop <= start:
        return
    # One query. A lab whose last change was before the period and left it outside running/suspended
    # has nothing in the period, so only the others' events are read.
    events = session.execute(
        select(LabEvent.lab_id, LabEvent.to_state, LabEvent.at, Activity.course_id, Lab.backend_id)
        .join(Lab, LabEvent.lab_id == Lab.id)
        .join(Activity, Lab.activity_id == Activity.id)
        .where(or_(Lab.state_changed_at >= start, Lab.state.in_(COUNTED)), LabEvent.at < stop)
        .order_by(LabEvent.lab_id, LabEvent.at, LabEvent.id)
    )
    yield from walk_events(events, start, stop)


Event = tuple[int, str, datetime, int, int]  # lab, state entered, when, course, backend


def walk_events(events: Iterable[Event], start: datetime, stop: datetime) -> Iterator[Interval]:
    """Walk each lab's events in order: the state an event enters lasts until the lab's next event, or
    until `stop` after its last one. Events that keep the state (a deadline recovery) continue the stretch."""
    current: Event | None = None
    for event in events:
        if current is not None and current[0] == event[0] and current[1] == event[1]:
            continue
        if current is not None:
            yield from _clipped(current, event[2] if current[0] == event[0] else stop, start, stop)
        current = event
    if current is not None:
        yield from _clipped(current, stop, start, stop)


def _clipped(current: Event, until: datetime, start: datetime, stop: datetime) -> Iterator[Interval]:
    lab_id, state, since, course_id, backend_id = current
    begin, finish = max(since, start), min(until, stop)
    if state in COUNTED and finish > begin:
        yield Interval(lab_id, course_id, backend_id, state, begin, finish)


def _split(begin: datetime, finish: datetime, first: datetime, size: timedelta) -> Iterator[tuple[int, datetime, datetime]]:
    """Cut [begin, finish) at every bucket edge first + k·size; yields (bucket index, piece start, piece end)."""
    index = (begin - first) // size
    while begin < finish:
        edge = first + (index + 1) * size
        piece_end = min(edge, finish)
        yield index, begin, piece_end
        begin, index = piece_end, index + 1


def _prices(session: Session) -> dict[int, Prices]:
    rows = session.execute(select(Backend.id, Backend.hourly_price, Backend.suspended_hourly_price))
    return {backend_id: Prices(hourly, suspended) for backend_id, hourly, suspended in rows}


def _rows(
    per_pair: dict[tuple[int, int], dict[str, float]], side: int, names: dict[int, str], prices: dict[int, Prices]
) -> list[UsageRow]:
    """Fold (course, backend) totals into rows for one side; costs are priced per backend, then summed."""
    grouped: dict[int, list[tuple[int, dict[str, float]]]] = defaultdict(list)
    for pair, hours in per_pair.items():
        grouped[pair[side]].append((pair[1], hours))
    rows = []
    for key, parts in grouped.items():
        running = sum(h[LabState.RUNNING.value] for _, h in parts)
        suspended = sum(h[LabState.SUSPENDED.value] for _, h in parts)
        running_cost = _sum_or_none(_cost(h[LabState.RUNNING.value], prices[b].hourly) for b, h in parts)
        suspended_cost = _sum_or_none(_cost(h[LabState.SUSPENDED.value], prices[b].suspended_hourly) for b, h in parts)
        rows.append(UsageRow(key, names.get(key, str(key)), running, suspended, running_cost, suspended_cost))
    return sorted(rows, key=lambda r: (-(r.running_hours + r.suspended_hours), r.name))


def _cost(hours: float, price: float | None) -> float | None:
    """No hours cost nothing whatever the price; hours at an unknown price cost an unknown amount."""
    if hours == 0:
        return 0.0
    return None if price is None else hours * price


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += value
    return total
