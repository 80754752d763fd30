"""How fast LabDesk suspends idle labs: one sweep over a big table, then suspends per minute through workers.

Part 1, the sweep (goal: <= 1 s). A fresh PostgreSQL database (`labdesk_bench_<random>`, dropped at the
end) is filled by COPY with `--labs` labs (default 100,000: running, suspended and deleted, three event
rows each), of which `--idle` (1,000) are running with `idle_deadline` in the past. `--signals`
keepalives (10,000: what 20,000 open lab pages post in one 15 s sweep interval) wait in Redis db 12.
Then `broker.schedule.suspend_idle(rt)` is timed end to end: flush the keepalives into the labs table,
find the idle labs, one bulk compare-and-set to `suspending` with event rows, and one Redis pipeline
enqueueing their rq jobs. Repeated `--repeat` times (the idle labs are put back between runs), and
once more with no pending keepalives, to show what the flush costs.

Part 2, suspends per minute (goal: >= 1,000/min with 4 workers). `--lab-count` (1,000) running labs on
a file-backed fake backend whose every call blocks `--call-latency` (0.2 s) like a slow cloud API; for
each entry of `--workers` (4 and 8) that many real `python -m app worker` processes are started, one
sweep runs, and the time until every lab is `suspended` gives suspends per minute. Each suspend costs
two backend calls (suspend, then observe), so a worker does at most 60 / (2 x latency) per minute.

Run: .venv/bin/python -m bench.suspend_sweep [--labs 100000] [--workers 4,8] [--skip-workers]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from redis import Redis
from rq import Worker
from sqlalchemy import func, select, text, update

from bench.common import Children, bench_settings, create_pg_database, drop_pg_database, summary, wait_for
from broker import activity, migrate, runtime
from broker.clock import utcnow
from broker.config import Settings
from broker.connector import LabSpec
from broker.db import engine_for
from broker.lifecycle import LabState
from broker.models import Activity, Backend, Base, Course, Image, Lab, LabEvent
from broker.runtime import Runtime
from broker.schedule import suspend_idle
from broker.testing.fake import FakeConnector

PEER = "a common peer suspends 4 stacks per minute by default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labs", type=int, default=100_000, help="labs in the table (default %(default)s)")
    parser.add_argument("--idle", type=int, default=1_000, help="running labs whose idle deadline has passed")
    parser.add_argument("--running", type=int, default=20_000, help="running labs that are not idle")
    parser.add_argument("--signals", type=int, default=10_000, help="keepalives waiting in Redis for the flush")
    parser.add_argument("--repeat", type=int, default=3, help="timed sweeps")
    parser.add_argument("--lab-count", type=int, default=1_000, help="labs suspended through workers")
    parser.add_argument("--call-latency", type=float, default=0.2, help="seconds each fake backend call blocks")
    parser.add_argument("--workers", default="4,8", help="worker counts to measure, comma-separated")
    parser.add_argument("--skip-workers", action="store_true", help="only the sweep (part 1)")
    parser.add_argument("--timeout", type=float, default=600, help="give up waiting for the workers after this")
    args = parser.parse_args()

    url = create_pg_database()
    work = Path(tempfile.mkdtemp(prefix="labdesk-bench-"))
    settings = bench_settings(url, work, poll_interval=1)
    redis = Redis.from_url(settings.redis_url)
    redis.flushdb()  # db 12 is the benchmarks' own
    rt = Runtime(settings, redis=redis)
    runtime.install(rt)
    figures: list[tuple[str, object, str]] = []
    notes: list[str] = []
    try:
        migrate.upgrade(settings)
        figures += sweep_benchmark(rt, args)
        if not args.skip_workers:
            worker_figures, worker_notes = workers_benchmark(rt, settings, work, args)
            figures += worker_figures
            notes += worker_notes
    finally:
        runtime.install(None)
        redis.flushdb()
        drop_pg_database(url)
    summary(
        "suspend sweep",
        figures,
        goals=["sweep over 100,000 labs with 1,000 idle <= 1 s", "suspends through 4 workers >= 1,000 per minute",
               PEER],
        notes=notes,
    )


# -- part 1: one sweep over a big table ------------------------------------------------------------------
def sweep_benchmark(rt: Runtime, args: argparse.Namespace) -> list[tuple[str, object, str]]:
    started = time.perf_counter()
    idle_ids, active_ids = load_labs(rt, args.labs, args.idle, args.running)
    print(f"loaded {args.labs:,} labs ({args.idle:,} idle, {args.running:,} running, the rest suspended or deleted) "
          f"in {time.perf_counter() - started:.1f} s")
    runs: list[float] = []
    for attempt in range(args.repeat + 1):
        reset_idle(rt, idle_ids)
        signals = 0 if attempt == args.repeat else args.signals
        pending(rt.redis, active_ids[:signals])
        t0 = time.perf_counter()
        moved = suspend_idle(rt)
        elapsed = time.perf_counter() - t0
        queued = sum(rt.redis.llen(key) for key in rt.redis.scan_iter("rq:queue:*"))
        print(f"sweep {attempt + 1}: {elapsed * 1000:7.1f} ms, {signals:,} keepalives flushed, {moved:,} labs -> suspending, "
              f"{queued:,} jobs queued")
        if moved != args.idle or queued != args.idle:
            raise SystemExit(f"expected {args.idle} labs suspended and queued, got {moved} and {queued}")
        if attempt < args.repeat:
            runs.append(elapsed)
        else:
            quiet = elapsed
    flush_time = time_flush(rt, active_ids[: args.signals])
    return [
        ("sweep_labs_in_table", args.labs, "labs"),
        ("sweep_idle_labs_suspended", args.idle, "labs"),
        ("sweep_keepalives_flushed", args.signals, "signals"),
        ("sweep_seconds_median", statistics.median(runs), "s"),
        ("sweep_seconds_worst", max(runs), "s"),
        ("sweep_seconds_without_keepalives", quiet, "s"),
        ("flush_seconds_alone", flush_time, "s"),
    ]


def seed_catalogue(rt: Runtime, activities: int, config: dict[str, object]) -> tuple[int, list[int]]:
    with rt.session() as session:
        backend = Backend(name="bench", kind="fake", config=config)
        image = Image(slug="bench", title="Bench image", spec={})
        course = Course(issuer="bench", context_id="bench", title="Bench course")
        session.add_all([backend, image, course])
        session.flush()
        acts = [
            Activity(course_id=course.id, resource_link_id=f"link-{n}", title=f"Lab {n}", image_id=image.id,
                     backend_id=backend.id, idle_suspend_after=120)
            for n in range(activities)
        ]
        session.add_all(acts)
        session.commit()
        return backend.id, [a.id for a in acts]


def copy_learners(cursor, count: int, now: datetime) -> None:  # type: ignore[no-untyped-def]
    """COPY learners 1..count into the users table."""
    with cursor.copy("COPY users (id, issuer, subject, name, email, created_at) FROM STDIN") as copy:
        for n in range(1, count + 1):
            copy.write_row((n, "bench", f"learner-{n}", f"Learner {n}", "", now))


def load_labs(rt: Runtime, labs: int, idle: int, running: int) -> tuple[list[int], list[int]]:
    """COPY users, labs and events in; returns the ids of the idle labs and of the running, active ones."""
    per_activity = 1000
    backend_id, activity_ids = seed_catalogue(rt, -(-labs // per_activity), {})
    now = utcnow()
    raw = engine_for(rt.settings.sqlalchemy_url).raw_connection()
    try:
        cursor = raw.cursor()
        copy_learners(cursor, per_activity, now)
        columns = ("id, user_id, activity_id, backend_id, state, handle, progress, message, recoveries, "
                   "last_active_at, idle_deadline, state_changed_at, created_at")
        with cursor.copy(f"COPY labs ({columns}) FROM STDIN") as copy:
            for n in range(labs):
                lab_id = n + 1
                if n < idle:
                    state, deadline = "running", now - timedelta(seconds=60)
                elif n < idle + running:
                    state, deadline = "running", now + timedelta(seconds=100)
                elif n % 5:
                    state, deadline = "suspended", now - timedelta(days=1)
                else:
                    state, deadline = "deleted", now - timedelta(days=3)
                user = n % per_activity + 1
                copy.write_row((lab_id, user, activity_ids[n // per_activity], backend_id, state,
                                f'{{"key": "labdesk-lab-{lab_id}"}}', 100, "", 0, now, deadline, now, now))
        with cursor.copy("COPY lab_events (lab_id, from_state, to_state, reason, actor, job_id, at) FROM STDIN") as copy:
            for lab_id in range(1, labs + 1):
                for source, target in (("", "requested"), ("requested", "provisioning"), ("provisioning", "running")):
                    copy.write_row((lab_id, source, target, "bench", "bench", None, now))
        cursor.execute("SELECT setval('users_id_seq', (SELECT max(id) FROM users))")
        cursor.execute("SELECT setval('labs_id_seq', (SELECT max(id) FROM labs))")
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return list(range(1, idle + 1)), list(range(idle + 1, idle + running + 1))


def reset_idle(rt: Runtime, lab_ids: list[int]) -> None:
    """Put the idle labs back (running, deadline passed) and empty the queues, for the next timed sweep."""
    rt.redis.flushdb()
    with rt.session() as session:
        session.execute(
            update(Lab).where(Lab.id.in_(lab_ids))
            .values(state="running", idle_deadline=utcnow() - timedelta(seconds=60), deadline=None)
        )
        session.commit()


def pending(redis: Redis, lab_ids: list[int]) -> None:
    """Keepalives from these labs' pages, as the web would have recorded them since the last sweep."""
    now = utcnow()
    with redis.pipeline(transaction=False) as pipe:
        for lab_id in lab_ids:
            activity.record_keepalive(pipe, lab_id, now)  # type: ignore[arg-type]
        pipe.execute()


def time_flush(rt: Runtime, lab_ids: list[int]) -> float:
    pending(rt.redis, lab_ids)
    with rt.session() as session:
        t0 = time.perf_counter()
        activity.flush(rt.redis, session, rt.settings.leave_grace)
        return time.perf_counter() - t0


# -- part 2: suspends per minute through real workers --------------------------------------------------
def workers_benchmark(rt: Runtime, settings: Settings, work: Path, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    tables = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
    with engine_for(settings.sqlalchemy_url).begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    state_dir = work / "fake-backend"
    backend_config = {"state_dir": str(state_dir), "call_latency": args.call_latency}
    _, activity_ids = seed_catalogue(rt, 1, backend_config)
    lab_ids = make_running_labs(rt, activity_ids[0], args.lab_count, state_dir)
    figures: list[tuple[str, object, str]] = [("worker_backend_call_latency", args.call_latency, "s")]
    notes: list[str] = []
    per_worker = 60 / (2 * args.call_latency)
    for count in [int(c) for c in args.workers.split(",") if c.strip()]:
        reset_running(rt, lab_ids, state_dir)
        elapsed, first, last = suspend_through_workers(rt, settings, work, count, len(lab_ids), args.timeout)
        rate = len(lab_ids) / elapsed * 60
        print(f"{count} workers: {len(lab_ids):,} labs suspended in {elapsed:.1f} s -> {rate:,.0f} suspends/min "
              f"(first after {first:.2f} s, last after {last:.1f} s)")
        figures += [
            (f"suspends_per_minute_{count}_workers", round(rate), "suspends/min"),
            (f"seconds_to_suspend_{len(lab_ids)}_labs_{count}_workers", elapsed, "s"),
            (f"ceiling_{count}_workers_backend_latency_only", round(per_worker * count), "suspends/min"),
        ]
    four = next((v for n, v, _ in figures if n == "suspends_per_minute_4_workers"), None)
    if four is not None and four < 1000:
        notes += [
            f"4 workers give {four:,} suspends/min, short of 1,000: each suspend is two backend calls "
            f"(suspend + observe) = {2 * args.call_latency:.1f} s of backend latency, so one worker can do at most "
            f"{per_worker:.0f}/min and 4 at most {4 * per_worker:.0f}/min, before rq's fork per job and the database",
            "to raise it: more worker processes (they wait on the backend, not the CPU: 8 on 2 cores nearly doubles it), "
            "`rq worker-pool -n N` on the backend's queue, one call fewer per suspend (observe in the next poll only "
            "when the backend is asynchronous), or a backend bulk-suspend call",
        ]
    return figures, notes


def make_running_labs(rt: Runtime, activity_id: int, count: int, state_dir: Path) -> list[int]:
    """`count` running labs of distinct learners, each with a ready object on the file-backed fake backend."""
    now = utcnow()
    raw = engine_for(rt.settings.sqlalchemy_url).raw_connection()
    try:
        cursor = raw.cursor()
        copy_learners(cursor, count, now)
        with rt.session() as session:
            backend_id = session.scalar(select(Backend.id))
        columns = "id, user_id, activity_id, backend_id, state, handle, progress, message, recoveries, last_active_at, state_changed_at, created_at"
        with cursor.copy(f"COPY labs ({columns}) FROM STDIN") as copy:
            for n in range(1, count + 1):
                copy.write_row((n, n, activity_id, backend_id, "running", f'{{"key": "labdesk-lab-{n}"}}', 100, "", 0, now, now, now))
        cursor.execute("SELECT setval('users_id_seq', (SELECT max(id) FROM users))")
        cursor.execute("SELECT setval('labs_id_seq', (SELECT max(id) FROM labs))")
        raw.commit()
    finally:
        raw.close()
    return list(range(1, count + 1))


def reset_running(rt: Runtime, lab_ids: list[int], state_dir: Path) -> None:
    rt.redis.flushdb()
    fake = FakeConnector("bench", {"state_dir": str(state_dir)})
    for lab_id in lab_ids:
        fake._save(LabSpec(lab_id, "bench", "bench").name, {"lab_id": lab_id, "state": "ready", "until": 0})
    with rt.session() as session:
        session.execute(
            update(Lab).where(Lab.id.in_(lab_ids))
            .values(state="running", idle_deadline=utcnow() - timedelta(seconds=60), deadline=None, backend_call=None)
        )
        session.commit()


def suspend_through_workers(rt: Runtime, settings: Settings, work: Path, count: int, labs: int, timeout: float):  # type: ignore[no-untyped-def]
    children = Children()
    log_dir = work / f"logs-{count}"
    log_dir.mkdir()
    try:
        children.start_workers(settings, count, log_dir)
        wait_for(lambda: len(Worker.all(connection=rt.redis)) >= count, 60, what=f"{count} workers to register")
        started = utcnow()
        t0 = time.perf_counter()
        moved = suspend_idle(rt)
        if moved != labs:
            raise SystemExit(f"the sweep moved {moved} labs, expected {labs}")

        def done() -> bool:
            with rt.session() as session:
                return session.scalar(select(func.count()).select_from(Lab).where(Lab.state == LabState.SUSPENDED.value)) == labs

        wait_for(done, timeout, interval=0.25, what=f"{labs} labs to be suspended (worker logs: {log_dir})")
        elapsed = time.perf_counter() - t0
        with rt.session() as session:
            first, last = session.execute(
                select(func.min(LabEvent.at), func.max(LabEvent.at)).where(LabEvent.to_state == "suspended", LabEvent.at >= started)
            ).one()
        return elapsed, _seconds(first - started), _seconds(last - started)
    finally:
        children.stop()


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


if __name__ == "__main__":
    main()
