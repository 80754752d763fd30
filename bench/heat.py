"""50 Heat labs launched at once through the real broker, on a real standalone OpenStack Heat.

Everything is real: `services.launch` for `--labs` learners of one activity on a backend of kind `heat`
(the test template `tests/connectors/heat/catalogue/heat/lab.yaml`, one `OS::Heat::TestResource`), rq
jobs on the backend's queue in Redis db 12, `--workers` real `python -m app worker --queue <backend queue>`
processes, `HeatConnector`, and a standalone Heat (API and engine in one process, sqlite). The database
is PostgreSQL `labdesk_bench_<random>`, dropped at the end.

Heat: `--heat ENDPOINT`, else $LABDESK_TEST_HEAT, else the bench starts its own from
../shared/tools/heat-standalone/start (its own HEAT_HOME with the venv of ~/.cache/labdesk-heat symlinked,
HEAT_FRESH=1, HEAT_STEP_SLEEP=0.1, a free loopback port) and stops it by PID at the end. Only a Heat of
its own lets the bench read Heat's sqlite (read-only) for microsecond times; another engine may also be
busy with other people's stacks.

Phase 1, launch. Time from the first `services.launch` until every lab is `running` (the bench polls the
database every 0.25 s), and per lab its time to running: the lab's `requested` event to its `running`
event (both written by the broker, microseconds).

Phase 2, what the broker adds. Per lab:
    broker overhead = (time to running) - (Heat's own create duration)
where Heat's create duration runs from the stack's `creation_time` to the time of the stack's own
`CREATE_COMPLETE` event (`heat.events.list(stack_id)`, the event whose resource is the stack). heatclient
gives both times in whole seconds (`2026-11-22T05:43:58Z`, truncated), so each duration, and so each
lab's overhead, is uncertain by up to 1 s either way; the mean over many labs is better than that. With a
Heat of its own the bench also reads the same two instants from Heat's sqlite (`stack.created_at`, the
stack's CREATE/COMPLETE `event.created_at`, microseconds) and splits the overhead into *before Heat*
(launch to the stack row: queue wait, the work-horse fork, the provider's stack listings) and *after Heat*
(CREATE_COMPLETE to `running`: the poll interval, rq's scheduler tick, the queue again, the outputs read).
Also the workers' CPU seconds per lab: utime+stime of each worker process and all its descendants (the
work-horse forked per job, the scheduler process) plus what they reaped (cutime+cstime), from
/proc/<pid>/stat at the start and the end of the phase, divided by the labs; and per rq job (jobs counted
from the workers' logs: one line per job taken, a poll being a job of its own). Apart from the run, a
probe forks a process holding what `labdesk worker` holds and times the imports a Heat job makes in its
work-horse (`work_horse_import_cpu`), the part of each job's CPU that is only importing.

Phase 3, suspend. Every running lab is asked to suspend at once (`services.request_state(..., SUSPENDING)`);
the time until all are `suspended` gives suspends per minute, with the same split against Heat's
SUSPEND_IN_PROGRESS -> SUSPEND_COMPLETE stack events.

Clean-up: every lab is deleted through the broker (timed too), any stack left with the run's name prefix
is deleted directly, the workers and a Heat of the bench's own are stopped by PID, the database dropped.

Run: .venv/bin/python -m bench.heat [--labs 50] [--workers 4] [--poll-interval 1] [--heat ENDPOINT]
     [--create-seconds 0] [--timeout 900] [--keep-logs]
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Worker
from sqlalchemy import func, select

from bench.common import ROOT, Children, bench_settings, create_pg_database, drop_pg_database, settings_env, summary, wait_for
from broker import migrate, runtime, services
from broker.lifecycle import LabState
from broker.models import Activity, Backend, Course, Image, Lab, LabEvent, User
from broker.runtime import Runtime

S = LabState
CATALOGUE = ROOT / "tests" / "connectors" / "heat" / "catalogue"
HEAT_TOOL = ROOT.parent / "shared" / "tools" / "heat-standalone"
SHARED_HEAT_VENV = Path.home() / ".cache" / "labdesk-heat" / "venv"
BACKEND = "heat-bench"
GOAL = "(figures for docs/heat.md)"
Figures = list[tuple[str, object, str]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=50, help="learners, each launching one lab at once")
    parser.add_argument("--workers", type=int, default=4, help="`labdesk worker` processes on the backend's queue")
    parser.add_argument("--poll-interval", type=int, default=1, help="the broker's poll_interval setting (whole seconds)")
    parser.add_argument("--heat", default=os.environ.get("LABDESK_TEST_HEAT"),
                        help="a running Heat endpoint (default: $LABDESK_TEST_HEAT; if neither, start one)")
    parser.add_argument("--create-seconds", type=float, default=0,
                        help="the template's create_seconds: TestResource waits this long in Heat per stack")
    parser.add_argument("--timeout", type=float, default=900, help="give up on a phase after this many seconds")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs (their path is printed)")
    args = parser.parse_args()
    if args.labs < 1 or args.workers < 1:
        parser.error("--labs and --workers must be at least 1")

    figures: Figures = []
    notes: list[str] = []
    heat = HeatEngine.own() if not args.heat else HeatEngine(args.heat.rstrip("/"))
    print(heat.describe())
    try:
        run(heat, args, figures, notes)
    finally:
        heat.stop()
    notes += [
        "Heat's API gives creation_time and event times in whole seconds (truncated): each lab's Heat duration, "
        "so its *_api overhead, is uncertain by up to 1 s either way",
        "broker overhead = a lab's time to running (its requested -> running events) minus Heat's create duration "
        "(stack creation_time -> the stack's CREATE_COMPLETE event); before/after Heat split it at those two instants",
        "worker CPU = utime+stime(+cutime+cstime) of the worker processes and all their descendants (work-horses, "
        "the rq scheduler) over the phase, /proc/<pid>/stat; it includes the workers' rest load over the phase",
    ]
    if heat.kind != "own":
        notes.append("the Heat engine is not the bench's own: other stacks on it may have competed; "
                     "the microsecond split from Heat's sqlite is only available with an engine of the bench's own")
    summary(f"Heat: {args.labs} labs at once through the broker", figures, goals=[GOAL], notes=notes)


def run(heat: HeatEngine, args: argparse.Namespace, figures: Figures, notes: list[str]) -> None:
    """Everything between starting the Heat and stopping it: the database, the workers, the three phases."""
    url = create_pg_database()
    work = Path(tempfile.mkdtemp(prefix="labdesk-bench-heat-"))
    settings = bench_settings(url, work, poll_interval=args.poll_interval)
    redis = Redis.from_url(settings.redis_url)
    redis.flushdb()  # db 12 is the benchmarks' own
    rt = Runtime(settings, redis=redis)
    runtime.install(rt)
    prefix = f"b{secrets.token_hex(4)}"
    children = Children()
    ok = False
    try:
        migrate.upgrade(settings)
        queue, user_ids, activity_id = seed(rt, heat.endpoint, prefix, args)
        log_dir = work / "logs"
        log_dir.mkdir()
        for index in range(args.workers):
            children.start([sys.executable, "-m", "app", "worker", "--queue", queue], settings_env(settings),
                           log_dir / f"worker-{index}.log")
        wait_for(lambda: len(Worker.all(connection=redis)) >= args.workers, 60, what=f"{args.workers} workers to register")
        workers = [p.pid for p in children.processes]
        idle = idle_cpu(workers)
        print(f"{args.workers} workers on {queue}, poll_interval {args.poll_interval} s, stack prefix {prefix}; "
              f"workers at rest use {idle * 100:.1f} % of a core")
        figures += [
            ("labs", args.labs, "labs"),
            ("workers", args.workers, "processes"),
            ("poll_interval", args.poll_interval, "s"),
            ("template_create_seconds", args.create_seconds, "s"),
            ("heat", heat.kind, ""),
            ("load_average_1min_at_start", os.getloadavg()[0], ""),
        ]
        lab_ids, launch_figures = launch_phase(rt, heat, user_ids, activity_id, workers, args, log_dir)
        figures += launch_figures
        figures += suspend_phase(rt, heat, lab_ids, workers, args, log_dir)
        figures += delete_phase(rt, lab_ids, args, log_dir)
        figures.append(("workers_cpu_at_rest", idle * 100, "% of a core"))
        imports = job_import_cpu()
        figures.append(("work_horse_import_cpu", imports, "CPU-s per job if the worker had not imported broker.jobs, "
                                                           "the connectors and heatclient before forking (it does)"))
        notes += worker_log_notes(log_dir)
        ok = True
    finally:
        children.stop()
        left = delete_leftover_stacks(heat.endpoint, prefix)
        if left:
            notes.append(f"{left} stack(s) of prefix {prefix} were still there after the run and were deleted directly")
        runtime.install(None)
        redis.flushdb()
        drop_pg_database(url)
        if ok and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"worker logs kept in {work / 'logs'}", file=sys.stderr)


# -- the world --------------------------------------------------------------------------------------------
def seed(rt: Runtime, endpoint: str, prefix: str, args: argparse.Namespace) -> tuple[str, list[int], int]:
    """One course, one activity on a Heat backend (its seed sealed in `secrets`), `--labs` learners."""
    config: dict[str, Any] = {
        "name_prefix": prefix,
        "catalogue_root": str(CATALOGUE),
        "call_timeout": 30,
        "create_timeout": 600,
        "providers": [{"name": "cloud-a", "endpoint": endpoint, "token": "bench"}],
    }
    if args.create_seconds:
        config["parameters"] = {"create_seconds": args.create_seconds}
    spec = {
        "id": "heat-bench",
        "hosts": [{"name": "main", "ports": [{"protocol": "ssh", "port": 22}]}],
        "backends": {"heat": {"template": "heat/lab.yaml"}},
    }
    with rt.session() as session:
        backend = Backend(name=BACKEND, kind="heat", config=config,
                          secrets=rt.vault.seal({"credential_seed": secrets.token_urlsafe(32)}))
        image = Image(slug="heat-bench", title="Heat bench image", protocol="ssh", spec=spec)
        course = Course(issuer="bench", context_id="bench-heat", title="Heat bench course")
        users = [User(issuer="bench", subject=f"learner-{n}", name=f"Learner {n}") for n in range(1, args.labs + 1)]
        session.add_all([backend, image, course, *users])
        session.flush()
        activity = Activity(course_id=course.id, resource_link_id="link-1", title="Heat lab", image_id=image.id,
                            backend_id=backend.id, idle_suspend_after=3600)
        session.add(activity)
        session.commit()
        return backend.queue_name, [u.id for u in users], activity.id


# -- phase 1 and 2: launch, and what the broker adds --------------------------------------------------------
def launch_phase(rt: Runtime, heat: HeatEngine, user_ids: list[int], activity_id: int, workers: list[int],
                 args: argparse.Namespace, log_dir: Path) -> tuple[list[int], Figures]:
    n = len(user_ids)
    meter = Meter(workers, heat.pid, log_dir)
    t0 = time.perf_counter()
    lab_ids = [services.launch(rt, user_id, activity_id, f"learner-{i}").id for i, user_id in enumerate(user_ids, 1)]
    issued = time.perf_counter() - t0
    wait_state(rt, lab_ids, S.RUNNING, args.timeout, log_dir)
    elapsed = time.perf_counter() - t0
    used = meter.read()
    ttr = event_spans(rt, lab_ids, S.REQUESTED, S.RUNNING)
    handles = stack_handles(rt, lab_ids)
    api = {lab: heat.api_span(h, "CREATE") for lab, h in handles.items()}
    overhead_api = [ttr[lab] - api[lab].seconds for lab in lab_ids]
    print(f"{n} labs running {elapsed:.1f} s after the first launch (the {n} launch calls took {issued:.2f} s); "
          f"workers used {used.workers:.1f} CPU-s")
    figures: Figures = [
        ("launch_calls_seconds", issued, "s"),
        ("seconds_to_all_running", elapsed, "s"),
        ("labs_running_per_minute", n / elapsed * 60, "labs/min"),
        ("time_to_running_p50", pct(ttr.values(), 50), "s"),
        ("time_to_running_p90", pct(ttr.values(), 90), "s"),
        ("time_to_running_max", max(ttr.values()), "s"),
        ("heat_create_p50_api", pct([s.seconds for s in api.values()], 50), "s (1 s resolution)"),
        ("heat_create_max_api", max(s.seconds for s in api.values()), "s (1 s resolution)"),
        ("broker_overhead_p50_api", pct(overhead_api, 50), "s (±1 s per lab)"),
        ("broker_overhead_mean_api", statistics.fmean(overhead_api), "s"),
    ]
    if heat.kind == "own":
        db = {lab: heat.db_span(h, "CREATE") for lab, h in handles.items()}
        requested = event_times(rt, lab_ids, S.REQUESTED)
        running = event_times(rt, lab_ids, S.RUNNING)
        overhead = [ttr[lab] - db[lab].seconds for lab in lab_ids]
        before = [(db[lab].start - requested[lab]).total_seconds() for lab in lab_ids]
        after = [(running[lab] - db[lab].end).total_seconds() for lab in lab_ids]
        figures += [
            ("heat_create_p50", pct([s.seconds for s in db.values()], 50), "s (Heat's sqlite, µs)"),
            ("heat_create_max", max(s.seconds for s in db.values()), "s"),
            ("broker_overhead_p50", pct(overhead, 50), "s"),
            ("broker_overhead_mean", statistics.fmean(overhead), "s"),
            ("broker_before_heat_p50", pct(before, 50), "s (launch -> stack created)"),
            ("broker_before_heat_max", max(before), "s"),
            ("broker_after_heat_p50", pct(after, 50), "s (CREATE_COMPLETE -> running)"),
            ("broker_after_heat_max", max(after), "s"),
        ]
    figures += used.figures("launch", n, "lab")
    return lab_ids, figures


# -- phase 3: suspend ------------------------------------------------------------------------------------
def suspend_phase(rt: Runtime, heat: HeatEngine, lab_ids: list[int], workers: list[int], args: argparse.Namespace,
                  log_dir: Path) -> Figures:
    n = len(lab_ids)
    meter = Meter(workers, heat.pid, log_dir)
    t0 = time.perf_counter()
    for lab_id in lab_ids:
        services.request_state(rt, lab_id, S.SUSPENDING, "bench", "bench")
    issued = time.perf_counter() - t0
    wait_state(rt, lab_ids, S.SUSPENDED, args.timeout, log_dir)
    elapsed = time.perf_counter() - t0
    used = meter.read()
    tts = event_spans(rt, lab_ids, S.SUSPENDING, S.SUSPENDED)
    handles = stack_handles(rt, lab_ids)
    api = {lab: heat.api_span(h, "SUSPEND") for lab, h in handles.items()}
    overhead_api = [tts[lab] - api[lab].seconds for lab in lab_ids]
    rate = n / elapsed * 60
    print(f"{n} labs suspended {elapsed:.1f} s after the first request ({issued:.2f} s to ask): {rate:.0f} suspends/min")
    figures: Figures = [
        ("suspends_per_minute", rate, "suspends/min"),
        ("seconds_to_all_suspended", elapsed, "s"),
        ("time_to_suspended_p50", pct(tts.values(), 50), "s"),
        ("time_to_suspended_max", max(tts.values()), "s"),
        ("heat_suspend_p50_api", pct([s.seconds for s in api.values()], 50), "s (1 s resolution)"),
        ("suspend_overhead_p50_api", pct(overhead_api, 50), "s (±1 s per lab)"),
    ]
    if heat.kind == "own":
        db = {lab: heat.db_span(h, "SUSPEND") for lab, h in handles.items()}
        overhead = [tts[lab] - db[lab].seconds for lab in lab_ids]
        figures += [
            ("heat_suspend_p50", pct([s.seconds for s in db.values()], 50), "s (Heat's sqlite, µs)"),
            ("suspend_overhead_p50", pct(overhead, 50), "s"),
            ("suspend_overhead_mean", statistics.fmean(overhead), "s"),
        ]
    figures += used.figures("suspend", n, "suspend")
    return figures


def delete_phase(rt: Runtime, lab_ids: list[int], args: argparse.Namespace, log_dir: Path) -> Figures:
    """Clean-up through the broker, timed on the way."""
    t0 = time.perf_counter()
    for lab_id in lab_ids:
        services.request_state(rt, lab_id, S.DELETING, "bench", "bench clean-up")
    wait_state(rt, lab_ids, S.DELETED, args.timeout, log_dir)
    elapsed = time.perf_counter() - t0
    print(f"{len(lab_ids)} labs deleted through the broker in {elapsed:.1f} s")
    return [("seconds_to_all_deleted", elapsed, "s"), ("deletes_per_minute", len(lab_ids) / elapsed * 60, "deletes/min")]


# -- the database ----------------------------------------------------------------------------------------
def wait_state(rt: Runtime, lab_ids: list[int], state: LabState, timeout: float, log_dir: Path) -> None:
    def done() -> bool:
        with rt.session() as session:
            counts = dict(session.execute(
                select(Lab.state, func.count()).where(Lab.id.in_(lab_ids)).group_by(Lab.state)
            ).all())
        if counts.get(S.FAILED.value):
            with rt.session() as session:
                failed = session.execute(select(Lab.id, Lab.message).where(Lab.id.in_(lab_ids), Lab.state == S.FAILED.value)).all()
                reasons = session.execute(
                    select(LabEvent.lab_id, LabEvent.reason).where(LabEvent.lab_id.in_([f.id for f in failed]),
                                                                   LabEvent.to_state == S.FAILED.value)
                ).all()
            raise SystemExit(f"{len(failed)} lab(s) failed on the way to {state.value}: "
                             f"{[tuple(r) for r in reasons][:5]} (worker logs: {log_dir})")
        return counts.get(state.value, 0) == len(lab_ids)

    wait_for(done, timeout, interval=0.25, what=f"{len(lab_ids)} labs to be {state.value} (worker logs: {log_dir})")


def event_times(rt: Runtime, lab_ids: list[int], state: LabState) -> dict[int, datetime]:
    """When each lab last entered `state` (the broker's own event rows, naive UTC, microseconds)."""
    with rt.session() as session:
        rows = session.execute(
            select(LabEvent.lab_id, func.max(LabEvent.at)).where(LabEvent.lab_id.in_(lab_ids), LabEvent.to_state == state.value)
            .group_by(LabEvent.lab_id)
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def event_spans(rt: Runtime, lab_ids: list[int], start: LabState, end: LabState) -> dict[int, float]:
    began, ended = event_times(rt, lab_ids, start), event_times(rt, lab_ids, end)
    return {lab: (ended[lab] - began[lab]).total_seconds() for lab in lab_ids}


def stack_handles(rt: Runtime, lab_ids: list[int]) -> dict[int, dict[str, Any]]:
    with rt.session() as session:
        return {lab_id: handle for lab_id, handle in session.execute(select(Lab.id, Lab.handle).where(Lab.id.in_(lab_ids)))}


# -- Heat -------------------------------------------------------------------------------------------------
@dataclass
class Span:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class HeatEngine:
    """The Heat the bench uses: given (someone's), or its own, started here and stopped by PID."""

    endpoint: str
    home: Path | None = None
    pid: int | None = None
    _client: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "own" if self.home else "given"

    def describe(self) -> str:
        if self.home:
            return f"Heat: started one of the bench's own at {self.endpoint} (pid {self.pid}, HEAT_HOME {self.home})"
        return f"Heat: using the running engine at {self.endpoint} (not started by the bench; left running)"

    @classmethod
    def own(cls) -> HeatEngine:
        start = HEAT_TOOL / "start"
        if not os.access(start, os.X_OK):
            raise SystemExit(f"no --heat, no LABDESK_TEST_HEAT, and no {start} to start a Heat with")
        home = Path(tempfile.mkdtemp(prefix="labdesk-bench-heat-home-"))
        if (SHARED_HEAT_VENV / "bin" / "heat-manage").exists():
            (home / "venv").symlink_to(SHARED_HEAT_VENV)
        else:
            print(f"no shared Heat venv at {SHARED_HEAT_VENV}: {start} installs one into {home} (about a minute)")
        env = {**os.environ, "HEAT_HOME": str(home), "HEAT_PORT": str(free_port()), "HEAT_FRESH": "1", "HEAT_STEP_SLEEP": "0.1"}
        done = subprocess.run([str(start)], env=env, capture_output=True, text=True, timeout=600)
        pid_file = home / "state" / "heat.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines or not lines[-1].startswith("http://"):
            engine = cls("", home, pid)
            engine.stop()
            raise SystemExit(f"the standalone Heat did not start:\n{done.stdout}{done.stderr}")
        return cls(lines[-1], home, pid)

    def stop(self) -> None:
        """Stop a Heat of the bench's own by its PID (SIGTERM, SIGKILL after 10 s), and remove its home."""
        if not self.home:
            return
        if self.pid and _is_our_heat(self.pid, self.home):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.25)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
            print(f"Heat (pid {self.pid}) stopped")
        shutil.rmtree(self.home, ignore_errors=True)

    def client(self) -> Any:
        if self._client is None:
            self._client = heat_client(self.endpoint)
        return self._client

    def api_span(self, handle: dict[str, Any], action: str) -> Span:
        """Heat's `action` of the lab's stack as its API tells it (whole seconds): CREATE from the stack's
        creation_time, others from the stack's <ACTION>_IN_PROGRESS event; to its <ACTION>_COMPLETE event."""
        heat = self.client()
        mine = [e for e in heat.events.list(handle["stack_id"]) if e.resource_name == handle["stack_name"]]
        ends = [e.event_time for e in mine if e.resource_status == f"{action}_COMPLETE"]
        if action == "CREATE":
            starts = [heat.stacks.get(handle["stack_id"]).creation_time]
        else:
            starts = [e.event_time for e in mine if e.resource_status == f"{action}_IN_PROGRESS"]
        if not starts or not ends:
            raise SystemExit(f"stack {handle['stack_name']}: no {action} events in Heat's event list")
        return Span(_api_time(max(starts)), _api_time(max(ends)))

    def db_span(self, handle: dict[str, Any], action: str) -> Span:
        """The same from a Heat of the bench's own, read from its sqlite (read-only; microseconds)."""
        assert self.home is not None
        with sqlite3.connect(f"file:{self.home / 'state' / 'heat.sqlite'}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute(
                "SELECT resource_status, max(created_at) FROM event WHERE stack_id = ? AND resource_name = ? "
                "AND resource_action = ? GROUP BY resource_status", (handle["stack_id"], handle["stack_name"], action)
            ).fetchall()
            times = {status: _db_time(at) for status, at in rows}
            if action == "CREATE":
                (created,) = db.execute("SELECT created_at FROM stack WHERE id = ?", (handle["stack_id"],)).fetchone()
                times["IN_PROGRESS"] = _db_time(created)
        if "IN_PROGRESS" not in times or "COMPLETE" not in times:
            raise SystemExit(f"stack {handle['stack_name']}: no {action} events in Heat's database")
        return Span(times["IN_PROGRESS"], times["COMPLETE"])


def heat_client(endpoint: str) -> Any:
    from heatclient import client

    return client.Client("1", endpoint=endpoint, token="bench", timeout=30)


def delete_leftover_stacks(endpoint: str, prefix: str, timeout: float = 120) -> int:
    """Delete every stack of this run still on the engine (normally none: the broker deleted them)."""
    if not endpoint:
        return 0
    heat = heat_client(endpoint)
    try:
        left = [s for s in heat.stacks.list(tags=prefix) if s.stack_status != "DELETE_COMPLETE"]
        for stack in left:
            heat.stacks.delete(stack.id)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(1)
            left = [s for s in heat.stacks.list(tags=prefix) if s.stack_status != "DELETE_COMPLETE"]
        if left:
            print(f"warning: {len(left)} stack(s) of prefix {prefix} still on {endpoint}", file=sys.stderr)
    except Exception as exc:  # clean-up must not hide the run's own error
        print(f"warning: could not list or delete stacks of prefix {prefix} on {endpoint}: {exc}", file=sys.stderr)
        return 0
    return len(left)


def _api_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None)


def _db_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _is_our_heat(pid: int, home: Path) -> bool:
    """The PID is still the Heat started with this HEAT_HOME (not a reused PID)."""
    try:
        return str(home) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- CPU ------------------------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and every live descendant, plus what each has reaped."""
    total, seen, todo = 0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return total / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


def idle_cpu(workers: list[int], seconds: float = 3) -> float:
    before = tree_cpu(workers)
    time.sleep(seconds)
    return (tree_cpu(workers) - before) / seconds


@dataclass
class Used:
    seconds: float
    workers: float
    heat: float | None
    machine_busy: float
    machine_total: float
    jobs: int

    def figures(self, phase: str, count: int, per: str) -> Figures:
        cores = self.machine_total / self.seconds
        found: Figures = [(f"worker_cpu_per_{per}", self.workers / count, "CPU-s"),
                          (f"worker_cpu_{phase}_total", self.workers, "CPU-s"),
                          (f"jobs_run_{phase}", self.jobs, f"rq jobs ({self.jobs / count:.1f} per {per})"),
                          (f"worker_cpu_per_job_{phase}", self.workers / max(self.jobs, 1), "CPU-s")]
        if self.heat is not None:
            found.append((f"heat_engine_cpu_per_{per}", self.heat / count, "CPU-s"))
        found.append((f"machine_busy_during_{phase}", self.machine_busy / self.machine_total * 100,
                      f"% of {cores:.0f} cores (everything on the machine)"))
        return found


class Meter:
    """CPU used by the workers, the bench's own Heat and the whole machine from now until `read`."""

    def __init__(self, workers: list[int], heat_pid: int | None, log_dir: Path) -> None:
        self.workers, self.heat_pid, self.log_dir = workers, heat_pid, log_dir
        self.logs0 = {log: log.stat().st_size for log in log_dir.glob("worker-*.log")}
        self.t0 = time.perf_counter()
        self.w0 = tree_cpu(workers)
        self.h0 = tree_cpu([heat_pid]) if heat_pid else None
        self.m0 = machine_busy()

    def read(self) -> Used:
        busy, total = machine_busy()
        heat = tree_cpu([self.heat_pid]) - self.h0 if self.heat_pid and self.h0 is not None else None
        return Used(time.perf_counter() - self.t0, tree_cpu(self.workers) - self.w0, heat, busy - self.m0[0],
                    total - self.m0[1], self.jobs())

    def jobs(self) -> int:
        """Jobs the workers took since: rq logs one line per job it dequeues, `<queue>: <call> (<job id>)`
        (and another, `Successfully completed <call> ...`, for a job that ended without a Retry)."""
        count = 0
        for log in self.log_dir.glob("worker-*.log"):
            with log.open("rb") as handle:
                handle.seek(self.logs0.get(log, 0))
                count += sum(1 for line in handle if b"advance_lab(" in line and b"Successfully completed" not in line)
        return count


# What a work-horse imports afresh for every job: `python -m app worker` has imported the app and rq, not
# the job's own modules, so each forked horse imports broker.jobs, the connectors and heatclient itself.
IMPORT_PROBE = """
import os, sys
sys.argv = ["app"]
import app, rq.worker  # what the worker process holds when it forks
pid = os.fork()
if pid == 0:
    import broker.jobs
    from broker.registry import connector_class
    from connectors.heat.providers import heat_client, parse_providers
    connector_class("heat")
    heat_client(parse_providers({"providers": [{"name": "p", "endpoint": "http://127.0.0.1:9/v1/x", "token": "t"}]})[0], 5)
    os._exit(0)
_, _, usage = os.wait4(pid, 0)
print(usage.ru_utime + usage.ru_stime)
"""


def job_import_cpu(repeat: int = 5) -> float:
    """CPU seconds a fresh work-horse spends importing what a Heat job needs (the least of `repeat`: on a
    shared machine contention only adds)."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"the import probe failed: {done.stderr[-2000:]}")
        runs.append(float(done.stdout.split()[-1]))
    return min(runs)


# -- small things -----------------------------------------------------------------------------------------
def pct(values: Any, p: float) -> float:
    """The p-th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def worker_log_notes(log_dir: Path) -> list[str]:
    """Say so when a worker logged a traceback or a warning; the figures are then suspect."""
    found = []
    for log in sorted(log_dir.glob("worker-*.log")):
        text = log.read_text(errors="replace")
        tracebacks, warnings = text.count("Traceback"), sum("WARNING" in line for line in text.splitlines())
        if tracebacks or warnings:
            first = next((line for line in text.splitlines() if "Traceback" in line or "WARNING" in line), "")
            found.append(f"{log.name}: {tracebacks} traceback(s), {warnings} warning line(s); first: {first[:200]}")
    return found


if __name__ == "__main__":
    main()
