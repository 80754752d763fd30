"""Labs per minute of one class's day on scaled-out LabDesk process sets, on one PostgreSQL and one Redis.

The day is tests/support/scale_scenario.py's, run by tests/test_scale_out.py for 12 learners: each learner
launches through a signed LTI 1.3 launch, waits for `running`, uses the desktop through a tunnel process
and a guacd double, runs "Check my work", and leaves; the idle sweep suspends every lab; a quarter come
back (resume), a quarter reset, and an admin bulk-deletes everything. Each shape runs on a fresh
database and the bench's Redis db (12), with every process real (gunicorn, `labdesk tunnel`, `labdesk
worker`, `labdesk scheduler`) and the fake backend at 0.3 s per provision, suspend and resume.

Per shape it prints the wall time of the day and of each phase, labs, lab moves, rq jobs that moved a lab,
backend calls, labs per minute (labs created and deleted over the day's wall time) and what the test asserts:
work done twice, labs lost, objects left on the backend, whether the learners' results equal the first
shape's. Timings depend on everything else the machine runs; compare shapes of one run.

Run: .venv/bin/python -m bench.scale_out [--learners 40] [--shapes 1/1/1/1,3/2/4/2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from redis import Redis

from bench.common import REDIS_URL, bench_settings, create_pg_database, drop_pg_database, summary
from tests.lti.signing_platform import SigningPlatform
from tests.support import scale_scenario
from tests.support.guacd_double import GuacdDouble
from tests.support.stack import Shape


def shape_of(text: str) -> Shape:
    """`web/tunnel/workers/schedulers`, e.g. 3/2/4/2."""
    try:
        web, tunnel, workers, schedulers = (int(part) for part in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shapes: {text!r} is not web/tunnel/workers/schedulers, e.g. 3/2/4/2") from None
    if min(web, tunnel, workers, schedulers) < 1:
        raise SystemExit(f"--shapes: {text!r} needs at least one process of each kind")
    return Shape(web, tunnel, workers, schedulers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=40, help="learners in the class (default %(default)s)")
    parser.add_argument("--shapes", default="1/1/1/1,3/2/4/2", help="web/tunnel/workers/schedulers, comma-separated (default %(default)s)")
    args = parser.parse_args()
    if args.learners < 1:
        raise SystemExit("--learners: at least 1")
    shapes = [shape_of(text) for text in args.shapes.split(",")]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the LMS double's JWKS requests
    redis = Redis.from_url(REDIS_URL)
    lms = SigningPlatform(client_id="scale-client", deployment_id="scale-deployment")
    figures: list[tuple[str, object, str]] = []
    first = None
    try:
        with GuacdDouble(sync_interval=0.5) as guacd, tempfile.TemporaryDirectory(prefix="labdesk-scale-") as work:
            for number, shape in enumerate(shapes):
                database = create_pg_database()
                try:
                    outcome = scale_scenario.day(shape, Path(work, f"shape-{number}"), bench_settings, redis, lms, guacd,
                                                 args.learners, database)
                finally:
                    drop_pg_database(database)
                first = first or outcome
                figures += shape_figures(str(shape), outcome, same=outcome.comparable() == first.comparable())
                print(f"{shape}: {outcome.seconds:.1f} s", flush=True)
    finally:
        lms.close()
        redis.close()
    summary(f"scale-out, {args.learners} learners", figures, notes=[
        "labs/min: labs created and deleted over the day's wall time (launch, desktop, check, leave, suspend, "
        "resume or reset, delete); the phases are waits for the slowest learner",
    ])


def shape_figures(name: str, outcome: scale_scenario.Outcome, same: bool) -> list[tuple[str, object, str]]:
    labs = len(outcome.labs_asked)
    rows: list[tuple[str, object, str]] = [
        (f"{name}: wall", outcome.seconds, "s"),
        *[(f"{name}: {phase}", seconds, "s") for phase, seconds in outcome.figures.items()],
        (f"{name}: labs", labs, ""),
        (f"{name}: labs/min", labs / outcome.seconds * 60, ""),
        (f"{name}: lab moves", len(outcome.events), ""),
        (f"{name}: rq jobs that moved a lab", outcome.jobs(), ""),
        (f"{name}: backend calls", len(outcome.calls), "(provision, suspend, resume, delete)"),
        (f"{name}: work done twice", len(outcome.doubled()), ""),
        (f"{name}: labs lost", len(outcome.lost()), ""),
        (f"{name}: objects left after the reconciler", len(outcome.left_on_backend), ""),
        (f"{name}: results as the first shape's", "yes" if same else "NO", ""),
    ]
    return rows


if __name__ == "__main__":
    main()
