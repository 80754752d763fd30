"""GPU allocation: throughput of the real allocator, fairness between courses, and no unit ever held twice.

A discrete-event simulation drives the REAL queue (`broker.gpus`: `record_inventory`, `open_request`,
`dispatch`, `release`, and through `dispatch` the fair order of `broker.gpu_fairness`) on a real database
(a scratch PostgreSQL database by default, `--database sqlite` for the embedded default), under a simulated
clock (`broker.clock.set_clock`): waits are simulated seconds; throughput is measured in wall time.

The scenario (`--seed` makes it reproducible; both policies get exactly the same one):
- `--requests` (500) GPU lab requests on one backend with `--devices` (8) interchangeable units, from
  `--courses` (4) courses of unequal size: `--weights` 50/25/15/10 % of the requests.
- About `--requests-per-learner` (1.5) requests per learner: every learner opens a lab of the course's
  first GPU activity, and one in two of them (picked at random) one of its second GPU activity too, so a
  learner may have two labs at once and the per-learner limit (`--per-learner`, 1) is exercised.
- Arrivals: the largest course's class starts at t = 0 and every one of its learners opens their first
  lab within `--burst-minutes` (5); every other request arrives at an independent uniform time over the
  day, i.e. a Poisson process given its count. The day lasts as long as the devices need to serve
  every request at offered load `--load` (1.0): requests x mean hold / (devices x load) = 20.8 h by default.
- Hold times: lognormal, mean `--hold-minutes` (20), sigma 0.5, clipped to 1 minute .. 6 x the mean.

Each arrival creates the lab (state "requested", one per learner and activity), opens its request and
dispatches; each grant marks its lab "running" and schedules its release; each release marks the lab
"deleted", releases it and dispatches. After every dispatch the tables are checked (no unit with two
holders, no lab with two units, the units' holders = the open granted requests) against the bench's own
ledger of unit -> lab built from the grants; any disagreement raises at once. At the end every request
must have been served, and the waits read back from the database must equal the ledger's.

The baseline is the same simulation with first come, first served: `service_order` as `broker.gpus`
calls it gets every request in one pseudo-course (the per-learner limit still applies), so the
difference is what the fair share between courses buys.

Run: .venv/bin/python -m bench.gpu_queue [--requests 500] [--devices 8] [--courses 4] [--database sqlite]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.common import drop_pg_database, scratch_database_url, summary
from broker import gpu_fairness, gpus, migrate
from broker.clock import set_clock
from broker.config import Settings, load_settings
from broker.connector import GpuUnit
from broker.db import engine_for, session_factory
from broker.gpu_fairness import Order, Waiting
from broker.models import Activity, Backend, Course, GpuRequest, GpuSlot, Image, Lab, User

START = datetime(2026, 3, 2, 8, 0)  # the simulated day starts on a Monday, 8:00 UTC
MODEL = "nvidia-t4"
POLICIES = ("fair", "fcfs")
RELEASE, ARRIVAL = 0, 1  # at the same instant a unit is freed before the next request arrives


class DoubleAssignment(RuntimeError):
    """A unit held by two labs, a lab holding two units, or the tables and the ledger disagreeing."""


@dataclass(frozen=True)
class Config:
    requests: int = 500
    devices: int = 8
    courses: int = 4
    weights: tuple[float, ...] = (50, 25, 15, 10)
    per_learner: int = 1
    requests_per_learner: float = 1.5
    hold_minutes: float = 20.0
    hold_sigma: float = 0.5
    load: float = 1.0
    burst_minutes: float = 5.0
    seed: int = 1

    @property
    def day_seconds(self) -> float:
        return self.requests * self.hold_minutes * 60 / (self.devices * self.load)


@dataclass(frozen=True)
class Arrival:
    index: int
    at: float  # simulated seconds from START
    course: int
    learner: int  # global learner number
    activity: int  # 0: the course's first GPU activity, 1: its second
    hold: float  # seconds the lab keeps its unit once granted


@dataclass
class RunResult:
    policy: str
    database: str
    config: Config
    learners: int
    waits: dict[int, float] = field(default_factory=dict)  # arrival index -> seconds waited
    dispatch_calls: int = 0
    dispatch_seconds: float = 0.0
    dispatch_times: list[float] = field(default_factory=list)
    grants: int = 0
    checks: int = 0
    double_assignments: int = 0
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    last_release: float = 0.0
    peak_waiting: int = 0
    overlapping: int = 0  # requests that arrived while their learner had another open request
    limited: int = 0  # requests passed over at least once because their learner was at the limit
    arrivals: list[Arrival] = field(default_factory=list)

    def course_waits(self) -> dict[int, list[float]]:
        by_course: dict[int, list[float]] = defaultdict(list)
        for arrival in self.arrivals:
            by_course[arrival.course].append(self.waits[arrival.index] / 60)
        return dict(sorted(by_course.items()))

    def minutes(self) -> list[float]:
        return [self.waits[a.index] / 60 for a in self.arrivals]

    def ratio(self, of: Callable[[list[float]], float]) -> float:
        values = [of(waits) for waits in self.course_waits().values()]
        low, high = min(values), max(values)
        return high / low if low > 0 else (1.0 if high == 0 else math.inf)


# -- the scenario -----------------------------------------------------------------------------------------

def course_weights(config: Config) -> list[float]:
    weights = list(config.weights[: config.courses])
    while len(weights) < config.courses:
        weights.append(weights[-1] if weights else 1.0)
    return weights


def scenario(config: Config) -> tuple[list[Arrival], int]:
    """The arrivals (sorted by time) and the number of distinct learners."""
    rng = random.Random(config.seed)
    weights = course_weights(config)
    total = sum(weights)
    exact = [config.requests * w / total for w in weights]
    counts = [int(x) for x in exact]
    for course in sorted(range(config.courses), key=lambda c: counts[c] - exact[c])[: config.requests - sum(counts)]:
        counts[course] += 1  # largest remainders
    day, burst = config.day_seconds, config.burst_minutes * 60
    mu = math.log(config.hold_minutes * 60) - config.hold_sigma**2 / 2  # lognormal with that mean
    raw: list[tuple[float, int, int, int]] = []
    learner_base = 0
    for course, count in enumerate(counts):
        if count == 0:
            continue
        learners = min(count, max(math.ceil(count / 2), round(count / config.requests_per_learner)))
        second = set(rng.sample(range(learners), count - learners))
        for learner in range(learners):
            first_at = rng.uniform(0, burst) if course == 0 else rng.uniform(0, day)
            raw.append((first_at, course, learner_base + learner, 0))
            if learner in second:
                raw.append((rng.uniform(0, day), course, learner_base + learner, 1))
        learner_base += learners
    raw.sort()
    arrivals = []
    for index, (at, course, learner, activity) in enumerate(raw):
        hold = min(max(rng.lognormvariate(mu, config.hold_sigma), 60.0), 6 * config.hold_minutes * 60)
        arrivals.append(Arrival(index, at, course, learner, activity, hold))
    return arrivals, learner_base


# -- the policies -----------------------------------------------------------------------------------------

def first_come_first_served(
    waiting: Sequence[Waiting], held_by_course: Mapping[int, int], held_by_user: Mapping[int, int], per_learner: int
) -> Order:
    """The baseline: every request in one pseudo-course, so the fair share has nothing to share."""
    one_course = [dataclasses.replace(w, course_id=0) for w in waiting]
    return gpu_fairness.service_order(one_course, {0: sum(held_by_course.values())}, held_by_user, per_learner)


def observed(policy: Callable[..., Order], limited: set[int]) -> Callable[..., Order]:
    """The policy as it is, noting the requests it passes over for their learner's limit."""

    def order(*args: object, **kwargs: object) -> Order:
        result = policy(*args, **kwargs)
        limited.update(w.request_id for w in result.blocked)
        return result

    return order


# -- one run ----------------------------------------------------------------------------------------------

class Ledger:
    """The bench's own record of who holds what, from the grants alone, checked against the tables."""

    def __init__(self, per_learner: int) -> None:
        self.per_learner = per_learner
        self.unit_of: dict[int, str] = {}  # lab -> unit key
        self.lab_of: dict[str, int] = {}  # unit key -> lab
        self.learner_holds: Counter[int] = Counter()

    def grant(self, lab_id: int, key: str, learner: int) -> None:
        if not key:
            raise DoubleAssignment(f"lab {lab_id} was granted but its request names no unit")
        if key in self.lab_of:
            raise DoubleAssignment(f"unit {key} granted to lab {lab_id} while lab {self.lab_of[key]} holds it")
        if lab_id in self.unit_of:
            raise DoubleAssignment(f"lab {lab_id} granted unit {key} while it holds {self.unit_of[lab_id]}")
        if self.learner_holds[learner] >= self.per_learner:
            raise DoubleAssignment(f"learner {learner} granted a GPU beyond the limit of {self.per_learner}")
        self.unit_of[lab_id], self.lab_of[key] = key, lab_id
        self.learner_holds[learner] += 1

    def release(self, lab_id: int, learner: int) -> None:
        key = self.unit_of.pop(lab_id)
        del self.lab_of[key]
        self.learner_holds[learner] -= 1

    @staticmethod
    def read(session: Session, backend_id: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The holders as the tables have them: (unit key, lab) from gpu_slots and from the open granted requests."""
        slots = session.execute(
            select(GpuSlot.key, GpuSlot.lab_id).where(GpuSlot.backend_id == backend_id, GpuSlot.lab_id.is_not(None))
        ).all()
        held = session.execute(
            select(GpuRequest.slot_key, GpuRequest.lab_id)
            .where(GpuRequest.backend_id == backend_id, GpuRequest.granted_at.is_not(None), GpuRequest.released_at.is_(None))
        ).all()
        return [tuple(row) for row in slots], [tuple(row) for row in held]

    def check(self, slots: list[tuple[str, int]], held: list[tuple[str, int]]) -> None:
        """The tables agree with each other and with the ledger: one holder per unit, one unit per lab."""
        for rows, what in ((slots, "gpu_slots"), (held, "open granted gpu_requests")):
            units, labs = Counter(key for key, _ in rows), Counter(lab for _, lab in rows)
            twice = [key for key, n in units.items() if n > 1]
            two = [lab for lab, n in labs.items() if n > 1]
            if twice or two:
                raise DoubleAssignment(f"{what}: units with two holders {twice}, labs with two units {two}")
        if dict(slots) != dict(held) or dict(slots) != self.lab_of:
            raise DoubleAssignment(f"holders disagree: gpu_slots {dict(slots)}, gpu_requests {dict(held)}, ledger {self.lab_of}")


def run(config: Config, policy: str, database: str, quiet: bool = False) -> RunResult:
    """One simulated day on a fresh database of kind `database` ("postgres" or "sqlite") with `policy`."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: {' or '.join(POLICIES)}")
    work = Path(tempfile.mkdtemp(prefix=f"labdesk-bench-gpu-{database}-"))
    url = scratch_database_url(database, work)
    arrivals, learners = scenario(config)
    result = RunResult(policy, database, config, learners, arrivals=arrivals)
    original = gpus.service_order
    limited: set[int] = set()
    try:
        started = time.perf_counter()
        settings = load_settings(environ={}, overrides={"database_url": url, "data_dir": str(work),
                                                        "gpu_per_learner": config.per_learner})
        migrate.upgrade(settings)
        gpus.service_order = observed(gpu_fairness.service_order if policy == "fair" else first_come_first_served, limited)
        _simulate(settings, config, arrivals, learners, result, quiet)
        result.setup_seconds = time.perf_counter() - started - result.wall_seconds
        result.limited = len(limited)
        return result
    finally:
        gpus.service_order = original
        set_clock(None)
        engine_for(url).dispose()
        if database == "postgres":
            drop_pg_database(url)
        shutil.rmtree(work, ignore_errors=True)


def _world(sessions: Callable[[], Session], config: Config, learners: int) -> tuple[int, dict[int, int], dict[tuple[int, int], int]]:
    """The backend with its units, the GPU image, the courses with two GPU activities each, the learners."""
    with sessions() as session:
        backend = Backend(name="gpu-bench", kind="fake", config={})
        image = Image(slug="gpu-desktop", title="GPU desktop", protocol="vnc",
                      spec={"resources": {"vcpu": 4, "ram_mb": 8192, "disk_gb": 40, "gpu": MODEL}})
        courses = [Course(issuer="bench", context_id=f"course-{c}", title=f"Course {chr(65 + c)}") for c in range(config.courses)]
        users = [User(issuer="bench", subject=f"learner-{n}", name=f"learner {n}") for n in range(learners)]
        session.add_all([backend, image, *courses, *users])
        session.flush()
        activities = {
            (c, a): Activity(course_id=course.id, resource_link_id=f"gpu-lab-{a + 1}", title=f"GPU lab {a + 1}",
                             image_id=image.id, backend_id=backend.id)
            for c, course in enumerate(courses) for a in range(2)
        }
        session.add_all(activities.values())
        session.commit()
        gpus.record_inventory(session, backend.id, [
            GpuUnit(key=f"gpu{n // 4}/pci_0000_{0x41 + n % 4:02x}_00_0", host=f"gpu{n // 4}", model=MODEL,
                    address=f"0000:{0x41 + n % 4:02x}:00.0")
            for n in range(config.devices)
        ])
        return backend.id, {n: user.id for n, user in enumerate(users)}, {k: a.id for k, a in activities.items()}


def _simulate(settings: Settings, config: Config, arrivals: list[Arrival], learners: int, result: RunResult,
              quiet: bool) -> None:
    now = 0.0
    set_clock(lambda: START + timedelta(seconds=now))
    sessions = session_factory(settings.sqlalchemy_url)
    backend_id, user_ids, activity_ids = _world(sessions, config, learners)
    ledger = Ledger(config.per_learner)
    events: list[tuple[float, int, int, int]] = [(a.at, ARRIVAL, a.index, 0) for a in arrivals]
    heapq.heapify(events)
    lab_of: dict[int, int] = {}  # arrival index -> lab id
    arrival_of: dict[int, Arrival] = {}  # lab id -> arrival
    waiting: set[int] = set()  # lab ids
    open_by_learner: Counter[int] = Counter()

    def dispatch(session: Session) -> None:
        began = time.perf_counter()
        granted = gpus.dispatch(session, settings, backend_id)
        took = time.perf_counter() - began
        result.dispatch_calls += 1
        result.dispatch_seconds += took
        result.dispatch_times.append(took)
        slots, held = ledger.read(session, backend_id)
        key_of = {lab: key for key, lab in held}
        for lab_id in granted:
            arrival = arrival_of.get(lab_id)
            if arrival is None or lab_id not in waiting:
                raise DoubleAssignment(f"lab {lab_id} granted although it does not wait")
            ledger.grant(lab_id, key_of.get(lab_id, ""), arrival.learner)
            waiting.discard(lab_id)
            result.waits[arrival.index] = now - arrival.at
            result.grants += 1
            lab = session.get(Lab, lab_id)
            lab.state = "running"
            heapq.heappush(events, (now + arrival.hold, RELEASE, arrival.index, lab_id))
        session.commit()
        ledger.check(slots, held)
        result.checks += 1

    began = time.perf_counter()
    shown = began
    handled = 0
    while events:
        now, kind, index, lab_id = heapq.heappop(events)
        arrival = arrivals[index]
        with sessions() as session:
            if kind == ARRIVAL:
                if open_by_learner[arrival.learner]:
                    result.overlapping += 1
                open_by_learner[arrival.learner] += 1
                lab = Lab(user_id=user_ids[arrival.learner], activity_id=activity_ids[(arrival.course, arrival.activity)],
                          backend_id=backend_id, state="requested")
                session.add(lab)
                session.commit()
                lab_of[index], arrival_of[lab.id] = lab.id, arrival
                waiting.add(lab.id)
                model = gpus.wanted_model(lab)
                if model is None:
                    raise RuntimeError("the bench's image asks for no GPU")
                gpus.open_request(session, lab, model)
                result.peak_waiting = max(result.peak_waiting, len(waiting))
            else:
                session.get(Lab, lab_id).state = "deleted"
                session.commit()
                gpus.release(session, lab_id)
                ledger.release(lab_id, arrival.learner)
                open_by_learner[arrival.learner] -= 1
                result.last_release = now
            dispatch(session)
        handled += 1
        if not quiet and time.perf_counter() - shown > 5:
            shown = time.perf_counter()
            print(f"  [{result.database}/{result.policy}] {handled:,}/{2 * len(arrivals):,} events, simulated "
                  f"{now / 3600:.1f} h, {len(waiting)} waiting", flush=True)
    result.wall_seconds = time.perf_counter() - began
    _final_checks(sessions, backend_id, arrivals, lab_of, result, waiting)


def _final_checks(sessions: Callable[[], Session], backend_id: int, arrivals: list[Arrival], lab_of: dict[int, int],
                  result: RunResult, waiting: set[int]) -> None:
    """Every request served and let go; the waits the database recorded are the ledger's."""
    if waiting or len(result.waits) != len(arrivals) or result.grants != len(arrivals):
        raise RuntimeError(f"{len(arrivals) - len(result.waits)} requests never served ({len(waiting)} still waiting)")
    with sessions() as session:
        rows = session.execute(
            select(GpuRequest.lab_id, GpuRequest.requested_at, GpuRequest.granted_at, GpuRequest.released_at)
            .where(GpuRequest.backend_id == backend_id)
        ).all()
        if session.scalar(select(GpuSlot.id).where(GpuSlot.lab_id.is_not(None)).limit(1)) is not None:
            raise DoubleAssignment("a unit is still held after every lab let go")
    recorded = {lab: (granted - requested).total_seconds() for lab, requested, granted, released in rows
                if granted is not None and released is not None}
    if len(rows) != len(arrivals) or len(recorded) != len(arrivals):
        raise RuntimeError(f"{len(rows)} requests recorded, {len(recorded)} served and released, {len(arrivals)} expected")
    for arrival in arrivals:
        if abs(recorded[lab_of[arrival.index]] - result.waits[arrival.index]) > 0.001:
            raise RuntimeError(f"request {arrival.index}: the database says it waited {recorded[lab_of[arrival.index]]} s, "
                               f"the ledger {result.waits[arrival.index]} s")


# -- figures ----------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def p90(values: list[float]) -> float:
    return percentile(values, 90)


def figures_of(result: RunResult) -> list[tuple[str, object, str]]:
    p = result.policy
    waits = result.minutes()
    times = result.dispatch_times
    return [
        (f"{p}_wall", round(result.wall_seconds, 2), "s"),
        (f"{p}_dispatch_calls_per_second", round(result.dispatch_calls / result.dispatch_seconds, 1), "calls/s (time inside dispatch)"),
        (f"{p}_grants_per_second", round(result.grants / result.dispatch_seconds, 1), "grants/s (time inside dispatch)"),
        (f"{p}_grants_per_second_wall", round(result.grants / result.wall_seconds, 1), "grants/s (whole loop)"),
        (f"{p}_dispatch_p50", round(percentile(times, 50) * 1000, 2), "ms"),
        (f"{p}_dispatch_p99", round(percentile(times, 99) * 1000, 2), "ms"),
        (f"{p}_wait_p50", round(percentile(waits, 50), 1), "simulated min"),
        (f"{p}_wait_p90", round(percentile(waits, 90), 1), "simulated min"),
        (f"{p}_wait_max", round(max(waits), 1), "simulated min"),
        (f"{p}_course_mean_wait_max_min_ratio", _ratio(result.ratio(statistics.fmean)), ""),
        (f"{p}_course_p90_wait_max_min_ratio", _ratio(result.ratio(p90)), ""),
        (f"{p}_double_assignments", result.double_assignments, f"(checked after each of {result.checks:,} dispatches)"),
    ]


def _ratio(value: float) -> object:
    return "inf" if math.isinf(value) else round(value, 2)


def report(results: dict[str, RunResult]) -> None:
    first = next(iter(results.values()))
    config = first.config
    counts = Counter(a.course for a in first.arrivals)
    learners = {c: len({a.learner for a in first.arrivals if a.course == c}) for c in counts}
    print(f"\n[{first.database}] {config.requests} requests from {first.learners} learners in {config.courses} courses "
          f"over {config.devices} devices; a day of {config.day_seconds / 3600:.1f} simulated h at offered load "
          f"{config.load:g}; per-learner limit {config.per_learner}")
    header = f"  {'':<26}" + "".join(f"{policy:>16}" for policy in results)
    print(header)
    rows: list[tuple[str, Callable[[RunResult], str]]] = [
        ("setup: migrate (s)", lambda r: f"{r.setup_seconds:.2f}"),
        ("simulation wall (s)", lambda r: f"{r.wall_seconds:.2f}"),
        ("dispatch calls", lambda r: f"{r.dispatch_calls:,}"),
        ("dispatch calls/s", lambda r: f"{r.dispatch_calls / r.dispatch_seconds:,.0f}"),
        ("grants/s (in dispatch)", lambda r: f"{r.grants / r.dispatch_seconds:,.0f}"),
        ("grants/s (whole loop)", lambda r: f"{r.grants / r.wall_seconds:,.0f}"),
        ("dispatch p50 / p99 (ms)", lambda r: f"{percentile(r.dispatch_times, 50) * 1000:.2f} / {percentile(r.dispatch_times, 99) * 1000:.2f}"),
        ("wait p50 (min)", lambda r: f"{percentile(r.minutes(), 50):.1f}"),
        ("wait p90 (min)", lambda r: f"{percentile(r.minutes(), 90):.1f}"),
        ("wait max (min)", lambda r: f"{max(r.minutes()):.1f}"),
        ("served at once", lambda r: f"{sum(1 for w in r.minutes() if w == 0):,}"),
        ("course mean max/min", lambda r: f"{_ratio(r.ratio(statistics.fmean))}"),
        ("course p90 max/min", lambda r: f"{_ratio(r.ratio(p90))}"),
        ("peak waiting", lambda r: f"{r.peak_waiting:,}"),
        ("passed over (own limit)", lambda r: f"{r.limited:,}"),
        ("last release (h)", lambda r: f"{r.last_release / 3600:.1f}"),
        ("double assignments", lambda r: f"{r.double_assignments}"),
    ]
    for name, cell in rows:
        print(f"  {name:<26}" + "".join(f"{cell(r):>16}" for r in results.values()))
    print(f"\n  per course: mean / p90 / max wait (simulated min)")
    weights = course_weights(config)
    print(f"  {'course':<8}{'share':>7}{'requests':>10}{'learners':>10}" + "".join(f"{policy:>24}" for policy in results))
    for course in sorted(counts):
        cells = []
        for r in results.values():
            waits = r.course_waits()[course]
            cells.append(f"{statistics.fmean(waits):.1f} / {p90(waits):.1f} / {max(waits):.1f}")
        print(f"  {chr(65 + course):<8}{weights[course] / sum(weights):>7.0%}{counts[course]:>10}{learners[course]:>10}"
              + "".join(f"{cell:>24}" for cell in cells))
    print(f"  {first.overlapping} requests arrived while their learner had another lab waiting or holding a GPU; "
          f"'passed over' counts those the order skipped for the learner's limit.")


def main(argv: Sequence[str] | None = None) -> dict[str, RunResult]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument("--courses", type=int, default=defaults.courses)
    parser.add_argument("--weights", default=",".join(f"{w:g}" for w in defaults.weights),
                        help="relative course sizes, the first course bursting at t=0 (default %(default)s)")
    parser.add_argument("--per-learner", type=int, default=defaults.per_learner, help="gpu_per_learner (default %(default)s)")
    parser.add_argument("--requests-per-learner", type=float, default=defaults.requests_per_learner,
                        help="between 1 and 2 (default %(default)s)")
    parser.add_argument("--hold-minutes", type=float, default=defaults.hold_minutes, help="mean hold (default %(default)s)")
    parser.add_argument("--load", type=float, default=defaults.load,
                        help="offered load over the day; sets the day's length (default %(default)s)")
    parser.add_argument("--burst-minutes", type=float, default=defaults.burst_minutes)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--database", default="postgres", choices=("postgres", "sqlite"))
    parser.add_argument("--policies", default=",".join(POLICIES), help="fair, fcfs or both (default %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests_per_learner <= 2:
        parser.error("--requests-per-learner must be between 1 and 2")
    config = Config(
        requests=args.requests, devices=args.devices, courses=args.courses,
        weights=tuple(float(w) for w in args.weights.split(",") if w.strip()), per_learner=args.per_learner,
        requests_per_learner=args.requests_per_learner, hold_minutes=args.hold_minutes, load=args.load,
        burst_minutes=args.burst_minutes, seed=args.seed,
    )
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    print(f"simulating {config.requests} GPU requests on {config.devices} devices, {config.courses} courses, "
          f"on {args.database}: {', '.join(policies)} ...", flush=True)
    results = {policy: run(config, policy, args.database) for policy in policies}
    report(results)
    figures: list[tuple[str, object, str]] = [
        ("database", args.database, ""), ("requests", config.requests, ""), ("devices", config.devices, ""),
        ("courses", config.courses, ""), ("learners", next(iter(results.values())).learners, ""),
    ]
    for result in results.values():
        figures += figures_of(result)
    summary("gpu queue", figures,
            goals=["no unit held twice, ever; every request served",
                   "a small course is not kept waiting behind another course's burst (docs/gpus.md)"],
            notes=burst_notes(results))
    return results


def burst_notes(results: dict[str, RunResult]) -> list[str]:
    """What the fair share buys, and who pays: the bursting course against the others, per policy."""
    notes = []
    for result in results.values():
        burst = [result.waits[a.index] / 60 for a in result.arrivals if a.course == 0]
        others = [result.waits[a.index] / 60 for a in result.arrivals if a.course != 0]
        if burst and others:
            notes.append(f"{result.policy}: mean wait {statistics.fmean(others):.1f} min in the other courses, "
                         f"{statistics.fmean(burst):.1f} min in the bursting course A; "
                         f"all requests {statistics.fmean(result.minutes()):.1f} min")
    return notes


if __name__ == "__main__":
    main()
