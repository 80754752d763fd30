"""A discrete-event simulation of a month of lessons that drives the REAL broker code.

What is real: `broker.services.launch`, `broker.activity.record_keepalive` / `record_leave`,
`broker.schedule.suspend_idle` (and `expire_stuck`), `broker.jobs.advance_lab` and the state machine
with its compare-and-set UPDATEs and event rows, on a SQLite file and Redis (db 12), with the in-memory
`FakeConnector` as the backend. What is simulated: time (`broker.clock.set_clock`, and the same clock
given to the FakeConnector), the job queue (`SimDispatcher` below, in place of rq: a job runs at its
simulated time, and a returned rq `Retry` runs it again `retry.intervals[0]` seconds later), and the
learners (a model of web/static/lab.js: a keepalive every 30 s while the page is open, a `leave` beacon
when the tab closes or after `page_idle_disconnect` seconds without input).

Learner types:
- A closes the tab at the end of the lesson: the page sends `leave` at once.
- B leaves the tab open: keepalives go on until the page's input-idle limit passes, then `leave`.
- C loses the beacon (browser crash, laptop lid, network gone): keepalives stop at the end, no `leave`;
  only `idle_suspend_after` brings the lab down.

Billing: VM time is the time a lab spends in provisioning, running, suspending or resuming, read back
from the event rows the real code wrote; learner-active time is lessons x lesson length.

Two shortcuts keep a month of 1,000 learners within minutes, neither changes an outcome:
- keepalives go into one Redis pipeline that is sent just before each sweep (the only reader of the
  presence set is the sweep's flush, and a later ZADD of a lab overwrites an earlier one);
- poll fast-forward (on by default, `fast_forward=False` turns it off): while the fake backend reports
  an object in transit, the polls before its settle time would only rewrite the same progress, so the
  dispatcher reschedules straight to the first poll at or after that time, on the same poll grid.
Sweep ticks are skipped while no lab is live (nights, weekends), and resume on the next launch.
`simulate_many` splits the month at midnights into parts run on both cores (see there).
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from redis import Redis
from rq import Retry
from sqlalchemy import func, select

from bench.common import REDIS_URL, bench_settings
from broker import activity, migrate, runtime, schedule, services
from broker.activity import record_keepalive, record_leave
from broker.clock import set_clock
from broker.connector import Connector
from broker.db import engine_for
from broker.dispatch import JobRequest
from broker.models import Activity, Backend, Course, Image, Lab, LabEvent, User
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector, reset_memory

BILLED = ("provisioning", "running", "suspending", "resuming")
LIVE = ("requested", "provisioning", "running", "resuming", "suspending")
MONDAY = datetime(2026, 3, 2)  # the simulated month starts on a Monday, 00:00 UTC
DAY = 86_400.0


@dataclass(frozen=True)
class SimConfig:
    learners: int = 1000
    lessons: int = 20  # per learner, at most one per working day
    working_days: int = 20  # Monday to Friday, four weeks
    lesson_minutes: int = 30
    section_size: int = 25  # learners of a section share lesson times
    arrival_spread: int = 120  # learners of a section open the page within this many seconds of the start
    day_start_hour: int = 8
    day_end_hour: int = 18
    slot_minutes: int = 60  # lessons start on a timetable grid (8:00, 9:00, ... 17:00)
    types: str = "AB"  # learner types, given out in turn
    seed: int = 1
    provision_delay: float = 60
    resume_delay: float = 20
    suspend_delay: float = 10
    idle_suspend_after: int = 120
    leave_grace: int = 20
    page_idle_disconnect: int = 240
    keepalive_interval: int = 30
    sweep_interval: int = 15
    poll_interval: int = 2
    expire_sweep: bool = False  # also run broker.schedule.expire_stuck each tick (nothing gets stuck here)
    fast_forward: bool = True
    redis_url: str = REDIS_URL
    db_dir: str | None = None  # where the SQLite file goes (default: /dev/shm when present)


@dataclass
class Lesson:
    learner: int
    kind: str
    start: float  # the learner opens the lab page (launch)
    end: float  # the learner stops working
    lab_id: int = 0
    last_signal: float = 0.0  # the page's last keepalive or leave
    leave_at: float | None = None
    relaunches: int = 0  # "Resume my lab" clicks forced by a lab caught while suspending


@dataclass
class Result:
    config: SimConfig
    lessons: list[Lesson]
    vm_seconds: dict[str, float]
    active_seconds: dict[str, float]
    phase_seconds: dict[str, dict[str, float]]
    to_suspending: dict[str, list[float]]  # per type: seconds from the last page signal to `suspending`
    to_suspended: dict[str, list[float]]
    mid_lesson_suspensions: int
    failed_labs: int
    stats: dict[str, float]

    def ratio(self, kind: str) -> float:
        return self.vm_seconds[kind] / self.active_seconds[kind] if self.active_seconds.get(kind) else float("nan")


class SimClock:
    """Simulated time: seconds since MONDAY, as a naive UTC datetime or an epoch float."""

    def __init__(self) -> None:
        self.t = 0.0
        self._epoch = (MONDAY - datetime(1970, 1, 1)).total_seconds()

    def now(self) -> datetime:
        return MONDAY + timedelta(seconds=self.t)

    def epoch(self) -> float:
        return self._epoch + self.t


class EventLoop:
    """A heap of (time, sequence, callback); callbacks run in time order with the clock set to their time."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.processed = 0

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, callback, args))

    def run(self) -> None:
        while self._heap:
            when, _, callback, args = heapq.heappop(self._heap)
            self.clock.t = when
            self.processed += 1
            callback(*args)


class SimDispatcher:
    """The `broker.dispatch.Dispatcher` protocol on the event heap instead of rq.

    A job runs at the simulated time it was enqueued (workers are assumed free); when it returns rq's
    `Retry` it runs again `retry.intervals[0]` seconds later, as rq's scheduler would. Like rq with
    `unique=True`, a job id that is queued or waiting for its retry is not enqueued twice.
    """

    def __init__(self, loop: EventLoop, settle_time: Callable[[int], float | None] | None = None) -> None:
        self.loop = loop
        self.settle_time = settle_time  # fast-forward: when the lab's backend object leaves transit
        self.pending: set[str] = set()
        self.runs = 0
        self.skipped_polls = 0

    def enqueue(self, request: JobRequest) -> bool:
        if request.job_id in self.pending:
            return False
        self.pending.add(request.job_id)
        self.loop.at(self.loop.clock.t, self._run, request)
        return True

    def enqueue_many(self, requests: list[JobRequest]) -> None:
        for request in requests:
            self.enqueue(request)

    def _run(self, request: JobRequest) -> None:
        self.runs += 1
        result = request.func(*request.args)
        if not isinstance(result, Retry):
            self.pending.discard(request.job_id)
            return
        interval = float(result.intervals[0])
        polls = 1
        if self.settle_time is not None and request.args:
            settles = self.settle_time(int(request.args[0]))
            if settles is not None and settles > self.loop.clock.t + interval:
                polls = math.ceil((settles - self.loop.clock.t) / interval - 1e-9)
                self.skipped_polls += polls - 1
        self.loop.at(self.loop.clock.t + polls * interval, self._run, request)


class SimRuntime(Runtime):
    """The broker runtime, but every backend is an in-memory FakeConnector on the simulated clock."""

    def __init__(self, settings: Any, dispatcher: SimDispatcher, redis: Redis, clock: SimClock) -> None:
        super().__init__(settings, dispatcher=dispatcher, redis=redis)
        self._sim_clock = clock

    def connector(self, backend: Backend) -> Connector:
        if backend.id not in self._connectors:
            self._connectors[backend.id] = FakeConnector(backend.name, backend.config, clock=self._sim_clock.epoch)  # type: ignore[index]
        return self._connectors[backend.id]  # type: ignore[index]


def schedule_lessons(config: SimConfig, rng: random.Random) -> list[Lesson]:
    """Sections of learners sharing random weekday start times within working hours."""
    if config.lessons > config.working_days:
        raise ValueError("at most one lesson per learner per working day: raise working_days")
    length = config.lesson_minutes * 60
    weekdays = [week * 7 + day for week in range(math.ceil(config.working_days / 5)) for day in range(5)]
    weekdays = weekdays[: config.working_days]
    first = config.day_start_hour * 3600
    last = config.day_end_hour * 3600 - length
    lessons: list[Lesson] = []
    for section_start in range(0, config.learners, config.section_size):
        members = range(section_start, min(section_start + config.section_size, config.learners))
        for day in sorted(rng.sample(weekdays, config.lessons)):
            start = day * DAY + rng.randrange(first, last + 1, config.slot_minutes * 60)
            for learner in members:
                opened = start + rng.uniform(0, config.arrival_spread)
                kind = config.types[learner % len(config.types)]
                lessons.append(Lesson(learner, kind, opened, opened + length))
    return lessons


class Simulation:
    """One simulated month for a set of lessons, on its own SQLite file and Redis presence key."""

    def __init__(self, config: SimConfig, lessons: list[Lesson], warm: frozenset[int] = frozenset(), start: float = 0.0) -> None:
        self.config = config
        self.lessons = lessons
        self.warm = warm  # learners whose lab exists, suspended, when this run starts (see simulate_many)
        self.clock = SimClock()
        self.clock.t = start
        self.loop = EventLoop(self.clock)
        self.redis = Redis.from_url(config.redis_url)
        self.signals = self.redis.pipeline(transaction=False)  # see the module docstring
        self.ticking = False
        self.open_pages = 0
        self.sweeps = 0
        self.user_ids: dict[int, int] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="labdesk-sim-", dir=config.db_dir or _fast_tmp()))
        self.settings = bench_settings(
            f"sqlite:///{self._tmp / 'sim.sqlite3'}", self._tmp,
            redis_url=config.redis_url, idle_suspend_after=config.idle_suspend_after,
            leave_grace=config.leave_grace, page_idle_disconnect=config.page_idle_disconnect,
            keepalive_interval=config.keepalive_interval, sweep_interval=config.sweep_interval,
            poll_interval=config.poll_interval,
        )
        settle = self._settle_time if config.fast_forward else None
        self.dispatcher = SimDispatcher(self.loop, settle)
        self.rt = SimRuntime(self.settings, self.dispatcher, self.redis, self.clock)

    # -- set-up ---------------------------------------------------------------------------------------
    def _seed(self) -> None:
        migrate.upgrade(self.settings)
        c = self.config
        learners = sorted({lesson.learner for lesson in self.lessons} | set(self.warm))
        with self.rt.session() as session:
            backend = Backend(name="sim", kind="fake", config={
                "provision_delay": c.provision_delay, "resume_delay": c.resume_delay, "suspend_delay": c.suspend_delay,
            })
            image = Image(slug="sim-desktop", title="Simulated desktop", protocol="vnc", spec={})
            course = Course(issuer="sim", context_id="sim-course", title="Simulated course")
            session.add_all([backend, image, course])
            session.flush()
            lab_activity = Activity(
                course_id=course.id, resource_link_id="sim-lab", title="Simulated lab", image_id=image.id,
                backend_id=backend.id, idle_suspend_after=c.idle_suspend_after, keepalive_interval=c.keepalive_interval,
            )
            users = {n: User(issuer="sim", subject=f"learner-{n}", name=f"learner-{n}") for n in learners}
            session.add(lab_activity)
            session.add_all(users.values())
            session.commit()
            self.activity_id = lab_activity.id
            self.user_ids = {n: user.id for n, user in users.items()}
            self._warm_labs(session, backend)

    def _warm_labs(self, session: Any, backend: Backend) -> None:
        """Labs left suspended by an earlier part of the month: exactly what a finished suspend leaves behind."""
        if not self.warm:
            return
        now = self.clock.now()
        labs = [
            Lab(user_id=self.user_ids[n], activity_id=self.activity_id, backend_id=backend.id, state="suspended",
                progress=100, last_active_at=now, idle_deadline=now, state_changed_at=now, created_at=now)
            for n in sorted(self.warm)
        ]
        session.add_all(labs)
        session.flush()
        connector = self.rt.connector(backend)
        for lab in labs:
            lab.handle = {"key": f"labdesk-lab-{lab.id}"}
            connector._save(lab.handle["key"], {"lab_id": lab.id, "state": "suspended", "until": 0})  # type: ignore[attr-defined]
        session.commit()

    def _settle_time(self, lab_id: int) -> float | None:
        """Simulated time at which the fake backend's object for `lab_id` leaves transit, if it is in one."""
        connector = next(iter(self.rt._connectors.values()), None)
        record = connector._load(f"labdesk-lab-{lab_id}") if isinstance(connector, FakeConnector) else None
        if not record or record.get("state") not in ("pending", "resuming", "suspending"):
            return None
        return float(record["until"]) - self.clock._epoch

    # -- the learner and the lab page (web/static/lab.js) ----------------------------------------------
    def _open_page(self, lesson: Lesson) -> None:
        lab = services.launch(self.rt, self.user_ids[lesson.learner], self.activity_id, actor="learner")
        lesson.lab_id = lab.id
        self.open_pages += 1
        self._start_sweeps()
        if lab.state == "suspending":  # caught while saving: the page will offer "Resume my lab"
            self.loop.at(self.clock.t + 2, self._watch_for_resume_button, lesson)
        self._keepalive(lesson)  # lab.js posts one keepalive on load, then one per interval

    def _watch_for_resume_button(self, lesson: Lesson) -> None:
        if self.clock.t >= lesson.end:
            return
        with self.rt.session() as session:
            state = session.scalar(select(Lab.state).where(Lab.id == lesson.lab_id))
        if state == "suspended":
            lesson.relaunches += 1
            services.launch(self.rt, self.user_ids[lesson.learner], self.activity_id, actor="learner")
        elif state == "suspending":
            self.loop.at(self.clock.t + 2, self._watch_for_resume_button, lesson)

    def _keepalive(self, lesson: Lesson) -> None:
        record_keepalive(self.signals, lesson.lab_id)  # type: ignore[arg-type]
        lesson.last_signal = self.clock.t
        self.loop.at(self.clock.t + self.config.keepalive_interval, self._page_tick, lesson)

    def _page_tick(self, lesson: Lesson) -> None:
        """lab.js's interval timer: leave after the input-idle limit, else keep the lab awake."""
        now = self.clock.t
        if lesson.kind in ("A", "C") and now >= lesson.end:
            return  # the tab closed at the end (A: the leave beacon was sent then; C: it was lost)
        last_input = min(now, lesson.end)
        if now - last_input > self.config.page_idle_disconnect:
            self._leave(lesson)
            self.open_pages -= 1
            return
        self._keepalive(lesson)

    def _close_tab(self, lesson: Lesson) -> None:
        if lesson.kind == "B":
            return  # the tab stays open
        if lesson.kind == "A":
            self._leave(lesson)
        self.open_pages -= 1

    def _leave(self, lesson: Lesson) -> None:
        record_leave(self.signals, lesson.lab_id)  # type: ignore[arg-type]
        lesson.leave_at = lesson.last_signal = self.clock.t

    # -- the sweeps (rq's cron scheduler in production) ---------------------------------------------------
    def _start_sweeps(self) -> None:
        if not self.ticking:
            self.ticking = True
            interval = self.config.sweep_interval
            self.loop.at((math.floor(self.clock.t / interval) + 1) * interval, self._sweep)

    def _sweep(self) -> None:
        if len(self.signals):
            self.signals.execute()
        self.sweeps += 1
        schedule.suspend_idle(self.rt)
        if self.config.expire_sweep:
            schedule.expire_stuck(self.rt)
        if self.open_pages or self.dispatcher.pending or self._any_live():
            self.loop.at(self.clock.t + self.config.sweep_interval, self._sweep)
        else:
            self.ticking = False  # nights and weekends: the next launch starts the ticks again

    def _any_live(self) -> bool:
        with self.rt.session() as session:
            return bool(session.scalar(select(func.count()).select_from(Lab).where(Lab.state.in_(LIVE))))

    # -- running and reading the bill --------------------------------------------------------------------
    def run(self) -> Result:
        started = time.perf_counter()
        reset_memory()
        self.redis.delete(activity.SEEN_KEY)
        set_clock(self.clock.now)
        runtime.install(self.rt)
        try:
            self._seed()
            for lesson in self.lessons:
                self.loop.at(lesson.start, self._open_page, lesson)
                self.loop.at(lesson.end, self._close_tab, lesson)
            self.loop.run()
            if len(self.signals):
                self.signals.execute()
            if self._any_live():
                raise RuntimeError("the simulation ended with labs still live; the month cannot be split")
            result = self._bill()
        finally:
            set_clock(None)
            runtime.install(None)
            self.redis.delete(activity.SEEN_KEY)
            self.redis.close()
            engine_for(self.settings.sqlalchemy_url).dispose()
            reset_memory()
            shutil.rmtree(self._tmp, ignore_errors=True)
        result.stats.update(
            wall_seconds=time.perf_counter() - started, events=self.loop.processed, sweeps=self.sweeps,
            job_runs=self.dispatcher.runs, skipped_polls=self.dispatcher.skipped_polls,
        )
        return result

    def _bill(self) -> Result:
        end = self.clock.t
        with self.rt.session() as session:
            rows = session.execute(select(LabEvent.lab_id, LabEvent.to_state, LabEvent.at).order_by(LabEvent.lab_id, LabEvent.id)).all()
            failed = session.scalar(select(func.count()).select_from(Lab).where(Lab.state == "failed")) or 0
        history: dict[int, list[tuple[float, str]]] = defaultdict(list)
        for lab_id, state, at in rows:
            history[lab_id].append(((at - MONDAY).total_seconds(), state))
        kind_of_lab = {lesson.lab_id: lesson.kind for lesson in self.lessons}
        vm: dict[str, float] = defaultdict(float)
        phases: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for lab_id, events in history.items():
            kind = kind_of_lab[lab_id]
            for (at, state), (until, _) in zip(events, events[1:] + [(end, "")]):
                if state in BILLED:
                    vm[kind] += until - at
                    phases[kind][state] += until - at
        active: dict[str, float] = defaultdict(float)
        for lesson in self.lessons:
            active[lesson.kind] += lesson.end - lesson.start
        to_suspending, to_suspended, mid_lesson = _suspensions(self.lessons, history)
        return Result(self.config, self.lessons, dict(vm), dict(active), {k: dict(v) for k, v in phases.items()},
                      to_suspending, to_suspended, mid_lesson, failed, {"simulated_days": end / DAY})


def _suspensions(lessons: list[Lesson], history: dict[int, list[tuple[float, str]]]):  # type: ignore[no-untyped-def]
    """How long after the page's last signal each lab went down, and suspensions while the page was live."""
    to_suspending: dict[str, list[float]] = defaultdict(list)
    to_suspended: dict[str, list[float]] = defaultdict(list)
    mid_lesson = 0
    for lesson in lessons:
        events = history[lesson.lab_id]
        mid_lesson += sum(1 for at, state in events if state == "suspending" and lesson.start <= at <= lesson.last_signal)
        after = [(at, state) for at, state in events if at > lesson.last_signal]
        down = next((at for at, state in after if state == "suspending"), None)
        done = next((at for at, state in after if state == "suspended"), None)
        if down is not None:
            to_suspending[lesson.kind].append(down - lesson.last_signal)
        if done is not None:
            to_suspended[lesson.kind].append(done - lesson.last_signal)
    return dict(to_suspending), dict(to_suspended), mid_lesson


# -- running many simulations on the machine's cores ---------------------------------------------------------
def simulate(config: SimConfig) -> Result:
    """One simulation in this process (the test suite's way)."""
    return Simulation(config, schedule_lessons(config, random.Random(config.seed))).run()


def simulate_many(configs: list[SimConfig], processes: int = 2, shards: int = 2) -> list[Result]:
    """Run several simulations, each split into `shards` consecutive parts of the month, on `processes` cores.

    The month splits cleanly at midnight: lessons end by early evening and every lab is suspended
    within minutes after, so at midnight the whole state of the system is "these learners have a
    suspended lab". A later part starts from exactly that (a suspended lab row with its handle, and a
    suspended object on the fake backend), and the merged bill is the bill of one run over the month.
    Each shard process keeps its presence signals under its own Redis key, so shards never read each
    other's keepalives.
    """
    tasks: list[tuple[int, SimConfig, list[Lesson], frozenset[int], float]] = []
    for index, config in enumerate(configs):
        lessons = schedule_lessons(config, random.Random(config.seed))
        for part, warm, start in _split_by_days(lessons, shards):
            tasks.append((index, config, part, warm, start))
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][2]))  # longest first keeps both cores busy
    jobs = [(tasks[i][1], tasks[i][2], tasks[i][3], tasks[i][4]) for i in order]
    if processes <= 1:
        done = [Simulation(*job).run() for job in jobs]
    else:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_run_shard, jobs))
    results = [done[order.index(i)] for i in range(len(tasks))]
    merged: list[Result | None] = [None] * len(configs)
    for (index, *_), result in zip(tasks, results):
        merged[index] = result if merged[index] is None else _merge(merged[index], result)  # type: ignore[arg-type]
    return [result for result in merged if result is not None]


def _split_by_days(lessons: list[Lesson], parts: int) -> list[tuple[list[Lesson], frozenset[int], float]]:
    """Consecutive whole days with about equal numbers of lessons; with each, who already has a lab."""
    days = sorted({int(lesson.start // DAY) for lesson in lessons})
    if any(int(lesson.end // DAY) != int(lesson.start // DAY) for lesson in lessons):
        raise ValueError("a lesson crosses midnight: the month cannot be split there")
    per_day = {day: sum(1 for lesson in lessons if int(lesson.start // DAY) == day) for day in days}
    parts = max(1, min(parts, len(days)))
    groups: list[list[int]] = [[] for _ in range(parts)]
    target, running, group = len(lessons) / parts, 0, 0
    for day in days:
        if running >= target * (group + 1) and group < parts - 1:
            group += 1
        groups[group].append(day)
        running += per_day[day]
    result = []
    seen: set[int] = set()
    for group_days in groups:
        if not group_days:
            continue
        chosen = set(group_days)
        part = [lesson for lesson in lessons if int(lesson.start // DAY) in chosen]
        result.append((part, frozenset(seen), group_days[0] * DAY))
        seen |= {lesson.learner for lesson in part}
    return result


def _run_shard(task: tuple[SimConfig, list[Lesson], frozenset[int], float]) -> Result:
    activity.SEEN_KEY = f"labdesk:seen:sim-{os.getpid()}"  # this process's own presence set (bench only)
    return Simulation(*task).run()


def _merge(a: Result, b: Result) -> Result:
    def add(x: dict[str, float], y: dict[str, float]) -> dict[str, float]:
        return {k: x.get(k, 0.0) + y.get(k, 0.0) for k in set(x) | set(y)}

    def join(x: dict[str, list[float]], y: dict[str, list[float]]) -> dict[str, list[float]]:
        return {k: x.get(k, []) + y.get(k, []) for k in set(x) | set(y)}

    stats = add(a.stats, b.stats)
    stats["wall_seconds"] = max(a.stats["wall_seconds"], b.stats["wall_seconds"])
    stats["simulated_days"] = max(a.stats["simulated_days"], b.stats["simulated_days"])
    return Result(
        a.config, a.lessons + b.lessons, add(a.vm_seconds, b.vm_seconds), add(a.active_seconds, b.active_seconds),
        {k: add(a.phase_seconds.get(k, {}), b.phase_seconds.get(k, {})) for k in set(a.phase_seconds) | set(b.phase_seconds)},
        join(a.to_suspending, b.to_suspending), join(a.to_suspended, b.to_suspended),
        a.mid_lesson_suspensions + b.mid_lesson_suspensions, a.failed_labs + b.failed_labs, stats,
    )


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 512 * 2**20 else None
