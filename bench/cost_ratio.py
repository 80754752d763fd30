"""VM-hours billed per learner-active hour over a month, from a simulation that drives the real broker.

A discrete-event simulation (bench/simulation.py) runs the real launch, keepalive/leave, suspend sweep,
job and state-machine code on a SQLite file and Redis db 12, with the in-memory fake backend and a
simulated clock: `--learners` (1,000) learners, `--lessons` (20) lessons of 30 minutes each in a month
of 20 weekdays, in sections of 25 that share random hourly start times between 8:00 and 17:00. The fake
backend takes ~60 s to provision, ~20 s to resume and ~10 s to suspend. Learner type A closes the tab
at the end of a lesson (the page sends `leave`); type B leaves it open, so keepalives go on until the
page's input-idle limit (`page_idle_disconnect`, 240 s) passes and the page sends `leave`.

VM-hours are the hours labs spend provisioning, running, suspending or resuming, read from the event
rows the broker wrote; learner-active hours are 30 min x lessons. An always-on lab would bill
720 h / 10 h = 72 times the active time. Sensitivity runs (smaller, `--sensitivity-learners`) vary
`idle_suspend_after` and `page_idle_disconnect` for type B, and for type C, whose `leave` beacon is
lost (crashed browser), the one case where `idle_suspend_after` decides.

Run: .venv/bin/python -m bench.cost_ratio [--learners 1000] [--lessons 20] [--processes 2]
Quick: .venv/bin/python -m bench.cost_ratio --learners 100 --lessons 5 --no-sensitivity
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from bench.common import summary
from bench.simulation import Result, SimConfig, simulate_many

GOALS = {"A": 1.05, "B": 1.25}
MONTH_HOURS = 720


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=1000)
    parser.add_argument("--lessons", type=int, default=20, help="lessons per learner in the month (at most 20)")
    parser.add_argument("--processes", type=int, default=2, help="cores to use (the month is split at midnights)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle-suspend-after", type=int, default=120)
    parser.add_argument("--page-idle-disconnect", type=int, default=240)
    parser.add_argument("--leave-grace", type=int, default=20)
    parser.add_argument("--sweep-interval", type=int, default=15)
    parser.add_argument("--no-sensitivity", action="store_true", help="only the main run")
    parser.add_argument("--sensitivity-learners", type=int, default=50)
    parser.add_argument("--sensitivity-lessons", type=int, default=6)
    parser.add_argument("--idle-values", default="60,120,300", help="idle_suspend_after values to compare")
    parser.add_argument("--page-idle-values", default="120,240,600", help="page_idle_disconnect values to compare")
    parser.add_argument("--faithful-polls", action="store_true", help="run every 2 s poll instead of fast-forwarding")
    args = parser.parse_args()

    base = SimConfig(
        learners=args.learners, lessons=args.lessons, types="AB", seed=args.seed,
        idle_suspend_after=args.idle_suspend_after, page_idle_disconnect=args.page_idle_disconnect,
        leave_grace=args.leave_grace, sweep_interval=args.sweep_interval, fast_forward=not args.faithful_polls,
    )
    small = dataclasses.replace(base, learners=args.sensitivity_learners, lessons=args.sensitivity_lessons, types="BC")
    idle_values = [int(v) for v in args.idle_values.split(",") if v.strip()]
    page_values = [int(v) for v in args.page_idle_values.split(",") if v.strip()]
    configs = [base]
    if not args.no_sensitivity:
        configs += [dataclasses.replace(small, idle_suspend_after=v) for v in idle_values]
        configs += [dataclasses.replace(small, page_idle_disconnect=v) for v in page_values]
    unique = list(dict.fromkeys(configs))
    print(f"simulating {len(unique)} month(s) on {args.processes} process(es); the main run has "
          f"{args.learners:,} learners x {args.lessons} lessons ...", flush=True)
    started = time.perf_counter()
    results = dict(zip(unique, simulate_many(unique, processes=args.processes, shards=2 * args.processes)))
    wall = time.perf_counter() - started

    main_result = results[base]
    report(main_result, "main run")
    figures: list[tuple[str, object, str]] = []
    for kind in ("A", "B"):
        figures.append((f"ratio_type_{kind}", round(main_result.ratio(kind), 4), "VM-h per learner-active h"))
    figures += [
        ("always_on_ratio", round(MONTH_HOURS / (args.lessons * 0.5), 1), "VM-h per learner-active h"),
        ("close_tab_to_suspending_max", round(max(main_result.to_suspending.get("A", [0])), 1), "s"),
        ("close_tab_to_suspended_mean", round(_mean(main_result.to_suspended.get("A", [])), 1), "s"),
        ("mid_lesson_suspensions", main_result.mid_lesson_suspensions, "suspensions"),
        ("failed_labs", main_result.failed_labs, "labs"),
    ]
    if not args.no_sensitivity:
        print(f"\nsensitivity ({args.sensitivity_learners} learners x {args.sensitivity_lessons} lessons, types B and C):")
        print(f"  {'setting':<28} {'ratio B':>8} {'ratio C (beacon lost)':>22}")
        for value in idle_values:
            result = results[dataclasses.replace(small, idle_suspend_after=value)]
            print(f"  {'idle_suspend_after=' + str(value):<28} {result.ratio('B'):8.4f} {result.ratio('C'):22.4f}")
            figures.append((f"ratio_type_B_idle_suspend_after_{value}", round(result.ratio("B"), 4), "VM-h per learner-active h"))
            figures.append((f"ratio_type_C_idle_suspend_after_{value}", round(result.ratio("C"), 4), "VM-h per learner-active h"))
        for value in page_values:
            result = results[dataclasses.replace(small, page_idle_disconnect=value)]
            print(f"  {'page_idle_disconnect=' + str(value):<28} {result.ratio('B'):8.4f} {result.ratio('C'):22.4f}")
            figures.append((f"ratio_type_B_page_idle_disconnect_{value}", round(result.ratio("B"), 4), "VM-h per learner-active h"))
        print("  type B keeps posting keepalives until the page's own idle limit, and its `leave` then puts the lab down\n"
              "  within leave_grace, so idle_suspend_after barely moves B; page_idle_disconnect does. idle_suspend_after\n"
              "  decides only when the beacon is lost (C).")
    figures.append(("simulation_wall_seconds", round(wall, 1), "s"))
    figures.append(("simulated_events", sum(int(r.stats["events"]) for r in results.values()), "events"))
    notes = [f"type {k}: {'meets' if main_result.ratio(k) <= g else 'MISSES'} the goal" for k, g in GOALS.items()]
    summary("cost ratio", figures,
            goals=[f"type A <= {GOALS['A']}", f"type B <= {GOALS['B']}", "always-on would be about 72 (720 h / 10 h)"],
            notes=notes)


def report(result: Result, title: str) -> None:
    print(f"\n{title}: {len(result.lessons):,} lessons, {result.stats['sweeps']:,.0f} sweeps, "
          f"{result.stats['job_runs']:,.0f} job runs ({result.stats['skipped_polls']:,.0f} polls fast-forwarded), "
          f"{result.stats['events']:,.0f} events")
    print(f"  {'type':<5} {'active h':>9} {'VM h':>9} {'ratio':>7}  {'provisioning':>12} {'running':>9} {'suspending':>10} "
          f"{'resuming':>9}  {'to suspending (mean/max s)':>27} {'to suspended (mean s)':>22}")
    for kind in sorted(result.vm_seconds):
        phases = result.phase_seconds.get(kind, {})
        down = result.to_suspending.get(kind, [])
        done = result.to_suspended.get(kind, [])
        print(f"  {kind:<5} {result.active_seconds[kind] / 3600:9.1f} {result.vm_seconds[kind] / 3600:9.1f} "
              f"{result.ratio(kind):7.4f}  {phases.get('provisioning', 0) / 3600:12.1f} {phases.get('running', 0) / 3600:9.1f} "
              f"{phases.get('suspending', 0) / 3600:10.1f} {phases.get('resuming', 0) / 3600:9.1f}  "
              f"{_mean(down):13.1f} / {max(down, default=0):11.1f} {_mean(done):22.1f}")
    print("  'to suspending' counts from the page's last signal (the leave beacon for A and B, the last keepalive for C)")
    relaunches = sum(lesson.relaunches for lesson in result.lessons)
    print(f"  mid-lesson suspensions: {result.mid_lesson_suspensions}; failed labs: {result.failed_labs}; "
          f"forced 'Resume my lab' clicks: {relaunches}")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


if __name__ == "__main__":
    main()
