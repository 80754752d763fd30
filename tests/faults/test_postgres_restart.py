"""PostgreSQL restarted (a fast shutdown: every connection cut) while labs are provisioning and another runs.

Real parts: a private PostgreSQL 15 cluster (tests/support/private_services.py; the machine's own is never
touched), Redis, the web as deployed (gunicorn), two `labdesk worker` processes, the sweeps called as the
cron calls them, and the fake cloud (slow calls, so the workers are inside backend calls when it goes).

What a learner notices: during the outage the lab page, the lab API and a launch answer 503 "LabDesk is
briefly unavailable … Nothing was changed", never a 500 or a traceback; keepalives (Redis only) still count.
After the restart the same web process and the same workers answer again without being restarted (their
pools ping before use); a job that failed on the dead connection runs again by itself seconds later
(`broker.jobs` returns rq's `Retry`), long before its lab's deadline. Then: no orphaned backend object, no lab
stuck. The figures are printed: run with -s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker.config import Settings
from broker.lifecycle import LabState
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.faults.restart_stack import (
    NOTHING_CHANGED, UNAVAILABLE, Web, assert_no_orphans, assert_none_stuck, gunicorn_webs,
    reasons, script_backend, signed_in,
)
from tests.support.private_services import PrivatePostgres, restartable_postgres  # noqa: F401  (a fixture)
from tests.support.waiting import lab_row, wait_state, wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
S = LabState
OUTAGE = 4.0  # seconds: longer than the workers' backend calls (2 s), so their jobs end on a dead connection


@pytest.fixture
def settings(restartable_postgres: PrivatePostgres, tmp_path: Path, redis_client: Any) -> Settings:
    # Deadlines far past the outage: the interrupted labs must come back by themselves, not by the deadline sweep.
    return make_settings(restartable_postgres.url, tmp_path, requested_deadline=60, provisioning_deadline=60, orphan_grace=1)


@pytest.fixture
def webs(settings: Settings, tmp_path: Path) -> Iterator[list[Web]]:
    """Two web processes: the learners' one, and a quiet one that gets no request during the outage (its
    pooled connections are the ones the restart cut, and nothing has told it yet)."""
    with gunicorn_webs(settings, tmp_path, count=2) as both:
        yield both


def test_a_postgresql_restart_is_a_readable_pause_and_the_same_processes_carry_on(
    rt: Runtime, world: World, fake_dir: Path, restartable_postgres: PrivatePostgres, pool: WorkerPool, webs: list[Web]
) -> None:
    web, quiet = webs
    workers = [w.pid for w in pool.processes]
    ada, bob, cy, dee = (signed_in(web.url, name) for name in ("Ada", "Bob", "Cy", "Dee"))
    ada_lab = ada.lab_id(ada.launch(world.activity_id))
    wait_state(rt, ada_lab, S.RUNNING, timeout=30)
    assert signed_in(quiet.url, "Quinn").get("/").status_code == 200  # its pool holds a connection now
    web_pids = web.worker_pids() + quiet.worker_pids()

    script_backend(rt, world.backend_id, call_latency=2)  # a slow cloud: workers stay inside its calls
    provisioning = [who.lab_id(who.launch(world.activity_id)) for who in (cy, dee)]
    wait_until(lambda: all(lab_row(rt, i).state == "provisioning" and lab_row(rt, i).backend_call is None for i in provisioning),
               timeout=20, what="both workers inside a provision call")

    bobs_form = bob.csrf_token()  # Bob has the course page open, its "Open lab" form loaded
    restartable_postgres.stop()
    down_at = time.monotonic()
    page = ada.get(f"/labs/{ada_lab}")
    assert page.status_code == 503
    assert UNAVAILABLE in page.text and NOTHING_CHANGED in page.text and "Traceback" not in page.text
    status = ada.get(f"/api/labs/{ada_lab}")
    assert status.status_code == 503
    assert status.json()["error"] == UNAVAILABLE
    refused = bob.post(f"/activities/{world.activity_id}/launch", data={"csrf_token": bobs_form})
    assert refused.status_code == 503 and UNAVAILABLE in refused.text
    assert ada.post(f"/api/labs/{ada_lab}/keepalive").status_code == 204  # presence lives in Redis
    health = ada.get("/healthz")
    assert health.status_code == 503 and health.json()["database"].startswith("failing")
    refusals = 0
    while time.monotonic() - down_at < OUTAGE:
        answer = ada.get(f"/labs/{ada_lab}")
        assert answer.status_code == 503 and "Traceback" not in answer.text
        refusals += 1
        time.sleep(0.2)

    restartable_postgres.start()
    up_at = time.monotonic()
    back = ada.get(f"/labs/{ada_lab}")  # the very first request after the restart
    answered_at = time.monotonic()
    assert back.status_code == 200 and "Your lab is running." in back.text
    ada.base_url = quiet.url  # the load balancer sends her next request to the other web process
    assert ada.get(f"/labs/{ada_lab}").status_code == 200  # its stale connection is pinged, replaced, not used
    assert web.worker_pids() + quiet.worker_pids() == web_pids  # the same web processes, not restarted ones
    assert [w.poll() for w in pool.processes] == [None, None] and [w.pid for w in pool.processes] == workers

    script_backend(rt, world.backend_id)  # the cloud answers quickly again
    bob_lab = bob.lab_id(bob.launch(world.activity_id))
    wait_state(rt, bob_lab, S.RUNNING, timeout=30)  # the same workers write to the restarted database
    fresh_lab_at = time.monotonic()
    for lab_id in provisioning:  # its job failed on the dead connection and ran again by itself
        wait_state(rt, lab_id, S.RUNNING, timeout=30)
    recovered_at = time.monotonic()
    for lab_id in provisioning:
        assert "deadline passed; retrying" not in reasons(rt, lab_id) and lab_row(rt, lab_id).recoveries == 0
    assert recovered_at - up_at < rt.settings.provisioning_deadline / 2
    assert lab_row(rt, ada_lab).state == "running"

    assert_no_orphans(rt, world.backend_id, fake_dir)
    assert_none_stuck(rt)
    print(f"\nPostgreSQL restart: outage {up_at - down_at:.1f} s, every page request in it answered 503 "
          f"({refusals + 2} of them); the first request {answered_at - up_at:.2f} s after the restart answered 200; "
          f"a new lab running {fresh_lab_at - up_at:.1f} s after it; the interrupted labs running "
          f"{recovered_at - up_at:.1f} s after it (provisioning deadline {rt.settings.provisioning_deadline} s)")
