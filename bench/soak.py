"""Load and soak: simulated learners against the whole LabDesk stack on loopback for minutes on end, with
errors, latency per endpoint, memory over time, and database connections.

The stack (bench/soak_stack.py) is all real processes: PostgreSQL (a scratch database), Redis db 12,
gunicorn as deployed (gthread 2 × 8), `labdesk tunnel`, `--workers` `labdesk worker` processes,
`labdesk scheduler`, the guacd double (bench/soak_guacd.py) and a file-backed fake backend whose desktops
are the double's and whose checks run for real. `--learners` learners (bench/soak_learner.py) arrive
evenly over `--ramp` seconds; each makes an LTI launch, polls its lab until it runs, opens its desktop
through the tunnel (syncs answered, a mouse move a second), sends a keepalive every `--keepalive` s (and
with `--status-every 5` polls the status as the connected page does), clicks "Check my work" once or
twice (`--checks`), and a `--away`
share of them leave, are suspended by the sweep, and launch again (resume). Every `--sample-every` s the
bench samples each stack process's VmRSS, the PostgreSQL connections and Redis (bench/soak_samples.py).

At the end it prints the `name: value unit` block: learners sustained (a running lab and a streaming
desktop at the end), errors in all, count/errors/p50/p99 per endpoint (`tunnel_sync` is a guacd `sync`'s
delay to the learner; `check_result` the time from the click to a passed attempt; `resume` from the new
launch to the desktop again), RSS first → last and its slope per process (least squares after
`--warm-up`), the most database connections against what the pools allow, and the goals.

Run: .venv/bin/python -m bench.soak [--learners 1000] [--minutes 10]   (small: --learners 20 --minutes 1)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import signal
import time
from pathlib import Path

from bench.common import summary
from bench.soak_learner import ENDPOINTS, Driver, Learner, Plan
from bench.soak_record import Recorder, percentile
from bench.soak_samples import Sampler, memory_figures
from bench.soak_stack import Stack
from tests.lti.signing_platform import SigningPlatform

FLAT_MIB_PER_HOUR = 10.0  # what "flat" means here: less than this after warm-up, per process


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add = parser.add_argument
    add("--learners", type=int, default=1000, help="simulated learners (default %(default)s)")
    add("--minutes", type=float, default=10, help="length of the run from the first launch (default %(default)s)")
    add("--ramp", type=float, default=90, help="seconds over which the learners arrive; at most a third of the run (default %(default)s)")
    add("--workers", type=int, default=4, help="`labdesk worker` processes, at least 2 (default %(default)s)")
    add("--web-workers", type=int, default=2, help="gunicorn worker processes (default %(default)s, as deployed)")
    add("--keepalive", type=float, default=30, help="seconds between a learner's keepalives (default %(default)s)")
    add("--status-every", type=float, default=0, help="seconds between status polls of a connected page (lab.js: 5; default 0: none)")
    add("--checks", type=float, default=1.5, help="'Check my work' clicks per learner, 0 to 2: 1.5 is one each and a second for half (default %(default)s)")
    add("--away", type=float, default=0.05, help="share of learners who leave and come back, if 150 s are left (default %(default)s)")
    add("--leave-grace", type=int, default=20, help="the stack's leave_grace setting, s (default %(default)s)")
    add("--sweep-interval", type=int, default=15, help="the stack's sweep_interval setting, s (default %(default)s)")
    add("--sample-every", type=float, default=15, help="seconds between memory/connection samples (default %(default)s)")
    add("--warm-up", type=float, default=None, help="samples before this many s are left out of the slopes (default: ramp + 120 s)")
    add("--http-threads", type=int, default=48, help="the driver's HTTP threads: calls in flight at most (default %(default)s)")
    add("--keep-logs", action="store_true", help="keep the stack's logs and state (kept anyway when errors occurred)")
    args = parser.parse_args()
    if args.learners < 1 or args.minutes <= 0 or args.workers < 2 or args.keepalive <= 0 or args.status_every < 0 \
            or not 0 <= args.checks <= 2:
        parser.error("--learners and --minutes must be positive, --workers at least 2, periods positive, --checks 0 to 2")
    args.ramp = min(args.ramp, args.minutes * 60 / 3)
    if args.warm_up is None:
        args.warm_up = min(args.ramp + 120, args.minutes * 60 / 2)
    return args


def main() -> None:
    args = options()
    _raise_file_limit(2 * args.learners + 200)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    lms = SigningPlatform(client_id="bench-client", deployment_id="bench-deployment")
    stack = Stack(workers=args.workers, web_workers=args.web_workers, leave_grace=args.leave_grace, sweep_interval=args.sweep_interval)
    recorder = Recorder(ENDPOINTS)
    clean = False
    try:
        print(f"starting the stack in {stack.work} ...", flush=True)
        stack.start(lms)
        print(f"web {stack.base}, tunnel {stack.settings.tunnel_listen}, guacd double 127.0.0.1:{stack.guacd_port}, "
              f"{args.workers} workers, scheduler, database {stack.database_url.rsplit('/', 1)[1]}; "
              f"{args.learners} learners for {args.minutes:g} min", flush=True)
        learners, sampler, load = asyncio.run(drive(stack, lms, recorder, args))
        clean = report(stack, recorder, learners, sampler, load, args)
    finally:
        stack.stop()
        lms.close()
        if clean and not args.keep_logs:
            stack.remove_work()
        else:
            print(f"logs kept in {stack.work}")


async def drive(stack: Stack, lms: SigningPlatform, recorder: Recorder,
                args: argparse.Namespace) -> tuple[list[Learner], Sampler, list[tuple[str, object, str]]]:
    driver = Driver(stack.base, lms, recorder, args.http_threads)
    t0 = time.monotonic()
    warm = Learner(0, driver, Plan(t0, t0, args.keepalive, args.status_every, 0, False))
    if not await warm.launch():  # creates the activity behind the link before the crowd arrives
        raise SystemExit(f"the warm-up launch failed: {recorder.messages()}")
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    sampler = Sampler(stack.pids, stack.database_url.rsplit("/", 1)[1], args.sample_every).start(t0)
    chance = random.Random(11)
    away = set(chance.sample(range(args.learners), round(args.away * args.learners)))
    checks = [int(args.checks) + (chance.random() < args.checks % 1) for _ in range(args.learners)]
    learners = [Learner(i + 1, driver, Plan(t0 + args.ramp * i / args.learners, end - chance.uniform(0, min(10, args.ramp)),
                                            args.keepalive, args.status_every, checks[i], i in away))
                for i in range(args.learners)]
    lags: list[float] = []
    probe = asyncio.ensure_future(_loop_lag(lags))
    cpu0 = sum(os.times()[:2])
    try:
        await asyncio.gather(*(learner.live() for learner in learners))
    finally:
        probe.cancel()
        sampler.stop()
        driver.close()
    wall = time.monotonic() - t0
    load = [
        ("driver_cpu", round(100 * (sum(os.times()[:2]) - cpu0) / wall), "% of one core (this process: the learners, HTTP threads, WebSockets)"),
        ("driver_loop_lag_p50", round(percentile(lags, 50) * 1000, 1), "ms (how late the driver's event loop wakes: its own delay in every figure)"),
        ("driver_loop_lag_p99", round(percentile(lags, 99) * 1000, 1), "ms"),
        ("http_stale_connection_retries", driver.stale_retries, "requests sent again on a fresh connection (not errors)"),
    ]
    return learners, sampler, load


async def _loop_lag(lags: list[float]) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.5)
        lags.append(time.monotonic() - before - 0.5)


def report(stack: Stack, recorder: Recorder, learners: list[Learner], sampler: Sampler, load: list[tuple[str, object, str]],
           args: argparse.Namespace) -> bool:
    """Print the figures; True when the run had no error at all."""
    sustained = sum(1 for learner in learners if learner.sustained)
    went_away = sum(1 for learner in learners if learner.plan.away)
    died = stack.exited()
    log_problems = _log_problems(stack.work)
    samples = sampler.samples
    errors = recorder.total_errors()
    figures: list[tuple[str, object, str]] = [
        ("learners", args.learners, f"over {args.minutes:g} min, arriving over {args.ramp:.0f} s"),
        ("learners_reached_running", sum(1 for learner in learners if learner.ran), ""),
        ("learners_sustained", sustained, "with a running lab and a streaming desktop at the end"),
        ("learners_away_and_resumed", f"{sum(1 for learner in learners if learner.resumed)} of {went_away}", ""),
        ("total_errors", errors, "calls"),
        ("stack_processes_exited", died or "none", ""),
        ("stack_log_errors", len(log_problems), "ERROR or Traceback lines in the stack's logs"),
        *recorder.figures(),
        *load,
        *memory_figures(samples, args.warm_up),
        ("db_connections_max", max((s.db_connections for s in samples), default=0), f"(pools allow {stack.db_pool_bound()})"),
        ("db_connections_last", samples[-1].db_connections if samples else 0, ""),
        ("redis_used_memory_first_last", f"{samples[0].redis_bytes / 2**20:.1f} → {samples[-1].redis_bytes / 2**20:.1f}" if samples else "-",
         "MiB (the whole server: other users' dbs too)"),
        ("redis_clients_max", max((s.redis_clients for s in samples), default=0), "(the whole server)"),
    ]
    summary("load and soak", figures, goals=[
        "total_errors 0, every learner sustained",
        f"memory flat: every rss_*_slope below {FLAT_MIB_PER_HOUR:g} MiB/hour after warm-up",
        f"db_connections_max bounded by the pools ({stack.db_pool_bound()}) and level once the learners are in",
    ], notes=[*recorder.messages(), *log_problems[:10]])
    return errors == 0 and not died and not log_problems


def _log_problems(work: Path) -> list[str]:
    found = []
    for log in sorted(work.glob("*.log")):
        if log.name == "guacd.log":
            continue
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line or line.startswith("Traceback"):
                found.append(f"{log.name}: {line[:200]}")
    return found


def _raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        raise SystemExit(f"the open-file limit {hard} is too low for this many learners (needs {needed}): ulimit -n")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
