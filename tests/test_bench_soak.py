"""bench/soak.py run tiny (10 learners for half a minute against the whole stack), so the load and soak
bench cannot silently rot: it must finish, every learner must get a running lab and a streaming desktop,
no call may fail, and every line a reader compares runs with must be printed. No timing is asserted.

It runs the bench as a subprocess, as a reader does, on the test suite's Redis db (the bench flushes it at
its start and end, as the suite's fixtures do) and a scratch PostgreSQL database the bench drops itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.soak_learner import ENDPOINTS
from tests.support.services import PG_ADMIN_URL, REDIS_URL, require_postgres, require_redis

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parent.parent
TINY = ["--learners", "10", "--minutes", "0.5", "--ramp", "5", "--keepalive", "5", "--checks", "1", "--workers", "2",
        "--sample-every", "5"]


def figures(out: str) -> dict[str, str]:
    """The `name: value unit` lines of the final block, by name."""
    block = out.split("== load and soak ==", 1)[1]
    return dict(re.findall(r"^([a-z0-9_]+): (.*)$", block, re.M))


def test_a_tiny_soak_sustains_every_learner_without_an_error() -> None:
    require_postgres()
    require_redis()
    env = {**os.environ, "LABDESK_BENCH_REDIS": REDIS_URL, "LABDESK_BENCH_PG": PG_ADMIN_URL}
    done = subprocess.run([sys.executable, "-m", "bench.soak", *TINY], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = figures(done.stdout)

    assert found["learners"].startswith("10 ")
    assert found["learners_reached_running"] == "10"
    assert found["learners_sustained"].startswith("10 "), done.stdout[-3000:]
    assert found["total_errors"] == "0 calls", done.stdout[-3000:]
    assert found["stack_processes_exited"] == "none"
    for name in ENDPOINTS:
        for suffix in ("count", "errors", "p50", "p99"):
            assert f"{name}_{suffix}" in found, f"{name}_{suffix} is not printed"
    for name in ("lti_launch", "lab_status", "connection", "tunnel_open", "tunnel_sync", "keepalive", "check_result"):
        assert found[f"{name}_count"] != "0 calls", f"no {name} was recorded"
    for process in ("web_master", "web_worker_1", "web_worker_2", "tunnel", "worker_1", "worker_2", "scheduler"):
        assert re.fullmatch(r"-?[\d,.]+ MiB/hour .*", found[f"rss_{process}_slope"]), found.get(f"rss_{process}_slope")
    assert re.fullmatch(r"\d+ \(pools allow \d+\)", found["db_connections_max"])
    assert int(found["db_connections_max"].split()[0]) > 0
    database = re.search(r"database (labdesk_bench_\w+)", done.stdout)
    assert database is not None and database[1] not in _databases(), "the bench left its database behind"


def _databases() -> list[str]:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()
