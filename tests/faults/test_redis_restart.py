"""Redis restarted, coming back EMPTY (it keeps nothing on disk), while labs are provisioning and others run.

Real parts: a private `redis-server` (tests/support/private_services.py; the machine's own is never touched),
the web as deployed (gunicorn), two `labdesk worker` processes, `labdesk scheduler`, the sweeps also called
at the moments that matter,
and the fake cloud (slow calls, so the workers are inside backend calls when Redis goes).

What a learner notices: during the outage a launch and a keepalive are refused with "LabDesk is briefly
unavailable … Nothing was changed", and write nothing; the lab page still shows the lab. After the restart:
the same workers serve again; labs whose queued jobs Redis lost reach running at the deadline sweep's first
pass (not at their deadline, which is 10 or 15 minutes in production); a
learner still at their lab is not suspended because the keepalives Redis held (or refused) are gone, while a
learner who left is suspended after the hold. Then: no orphaned backend object, no lab stuck. The figures
(refused keepalives vs the outage, recovery times) are printed: run with -s to read them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis
from rq import Worker
from sqlalchemy import select

from broker import schedule
from broker.config import Settings
from broker.lifecycle import LabState
from broker.models import Activity, Lab, User
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.faults.restart_stack import (
    NOTHING_CHANGED, UNAVAILABLE, Page, Web, assert_no_orphans, assert_none_stuck, drive_to_running,
    gunicorn_webs, reasons, script_backend, signed_in,
)
from tests.support.private_services import PrivateRedis, restartable_redis, runtime_on_the_settings_redis  # noqa: F401  (fixtures)
from tests.support.processes import stop_process
from tests.support.waiting import lab_row, wait_state, wait_until
from tests.support.workers import ROOT, WorkerPool, settings_env
from tests.support.world import World

pytestmark = [pytest.mark.slow]
S = LabState
OUTAGE = 12.0  # seconds: past the labs' idle period (4 s), and past what redis-py's own retries (a few seconds) hide from a worker whose job ends in it


@pytest.fixture
def settings(sqlite_db_url: str, tmp_path: Path, restartable_redis: PrivateRedis) -> Settings:
    return make_settings(sqlite_db_url, tmp_path, redis_url=restartable_redis.url(3), requested_deadline=30,
                         provisioning_deadline=30, leave_grace=1, orphan_grace=1)


@pytest.fixture
def web(settings: Settings, tmp_path: Path) -> Iterator[Web]:
    with gunicorn_webs(settings, tmp_path) as [server]:
        yield server


@pytest.fixture
def cron(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`labdesk scheduler`, which enqueues the sweeps every `sweep_interval` (15 s) on its own as well."""
    with (tmp_path / "scheduler.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app", "scheduler"], cwd=ROOT, env=settings_env(settings),
                                   stdout=log, stderr=subprocess.STDOUT)
    yield process
    stop_process(process)


def health_check(settings: Settings, what: str) -> subprocess.CompletedProcess[str]:
    """The container health check as compose and Kubernetes run it."""
    return subprocess.run([sys.executable, "deploy/healthcheck.py", what], cwd=ROOT, env=settings_env(settings),
                          capture_output=True, text=True, timeout=30)


def short_idle(rt: Runtime, world: World) -> None:
    """Idle after 4 s; the page says it is there every 0.25 s (`Page`), well within its declared 3-s keepalive
    interval (30 s in production). The declared interval sets the hold after a restart (two of them: 6 s).
    It was 1 s (a 2-s hold), and on a loaded CI machine the test's own steps between the restart and Ada's
    next keepalive took longer than that, so the scheduler's sweep suspended her lab: the production
    margin is a whole keepalive interval, which the scaled-down test must keep too."""
    with rt.session() as session:
        activity = session.get(Activity, world.activity_id)
        activity.idle_suspend_after, activity.keepalive_interval = 4, 3
        session.commit()


def test_an_empty_redis_after_a_restart_loses_no_lab_and_suspends_no_learner_who_is_there(
    rt: Runtime, world: World, fake_dir: Path, restartable_redis: PrivateRedis, pool: WorkerPool, cron: subprocess.Popen[bytes],
    web: Web, tmp_path: Path
) -> None:
    short_idle(rt, world)
    workers = pool.processes
    ada, bob, cy, dee, fay, eve = (signed_in(web.url, name) for name in ("Ada", "Bob", "Cy", "Dee", "Fay", "Eve"))
    running = {who: who.lab_id(who.launch(world.activity_id)) for who in (ada, bob)}
    for lab_id in running.values():
        wait_state(rt, lab_id, S.RUNNING, timeout=30)
    pages = {who: Page(who, lab_id) for who, lab_id in running.items()}
    for page in pages.values():
        page.start()
    wait_until(lambda: all(p.answers for p in pages.values()), what="the first keepalives")
    assert schedule.suspend_idle(rt) == 0  # both learners are at their labs

    script_backend(rt, world.backend_id, call_latency=2, provision_delay=1)  # a slow cloud: workers stay busy
    provisioning = [who.lab_id(who.launch(world.activity_id)) for who in (cy, dee)]
    wait_until(lambda: all(lab_row(rt, i).state == "provisioning" and lab_row(rt, i).backend_call is None for i in provisioning),
               timeout=20, what="both workers inside a provision call")
    queued = fay.lab_id(fay.launch(world.activity_id))  # both workers are busy: its job waits in Redis
    assert lab_row(rt, queued).state == "requested"
    pages[bob].close()
    assert bob.post(f"/api/labs/{running[bob]}/leave").status_code == 204  # Bob closes his tab; Ada stays

    restartable_redis.stop()
    down_at = time.monotonic()
    refused = eve.launch(world.activity_id)
    assert refused.status_code == 503
    assert UNAVAILABLE in refused.text and NOTHING_CHANGED in refused.text and "Traceback" not in refused.text
    keepalive = ada.post(f"/api/labs/{running[ada]}/keepalive")
    assert keepalive.status_code == 503
    assert keepalive.json() == {"error": UNAVAILABLE, "advice": "Nothing was changed. Please try again in a minute."}
    page = ada.get(f"/labs/{running[ada]}")
    assert page.status_code == 200 and "Your lab is running." in page.text  # the database still answers
    assert ada.get(f"/api/labs/{running[ada]}").json()["state"] == "running"
    assert ada.get("/healthz").json()["status"] == "down"
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))

    pages[ada].paused.set()  # the restart falls between two of Ada's keepalives
    restartable_redis.start()
    up_at = time.monotonic()
    assert schedule.suspend_idle(rt) == 0, "Ada was at her lab all along: the sweep must not suspend it"
    pages[ada].paused.clear()
    with rt.session() as session:
        assert session.scalars(select(Lab.id).join(User).where(User.subject == "Eve")).all() == []

    assert [w.poll() for w in workers] == [None, None], "a worker exited with Redis: " + _logs(tmp_path)
    assert cron.poll() is None, "the scheduler exited with Redis: " + _logs(tmp_path)
    script_backend(rt, world.backend_id)  # the cloud answers quickly again
    late = eve.lab_id(eve.launch(world.activity_id))
    wait_state(rt, late, S.RUNNING, timeout=30)  # the same workers serve the new, empty Redis
    fresh_lab_at = time.monotonic()

    drive_to_running(rt, [*provisioning, queued])  # the deadline sweep, as the cron runs it
    recovered_at = time.monotonic()
    assert "deadline passed; retrying" not in reasons(rt, queued)  # its job, lost with Redis, was put back
    assert lab_row(rt, queued).recoveries == 0  # at once, long before its deadline

    wait_until(lambda: schedule.suspend_idle(rt) >= 1 or lab_row(rt, running[bob]).state != "running", timeout=20,
               interval=0.5, what="Bob's lab to be suspended once the hold is over")
    wait_state(rt, running[bob], S.SUSPENDED, timeout=20)
    schedule.suspend_idle(rt)  # one more sweep: the labs nobody has open (Cy's, Dee's …) may go as idle; Ada's must not
    assert lab_row(rt, running[ada]).state == "running", f"Ada's keepalives after the restart: {pages[ada].answers_since(up_at)}"
    assert "learner idle" not in reasons(rt, running[ada])
    for page in pages.values():
        page.close()

    assert [w.poll() for w in workers] == [None, None]
    assert len(Worker.all(connection=Redis.from_url(rt.settings.redis_url))) == 2  # registered again
    probe = health_check(rt.settings, "worker")
    assert probe.returncode == 0, probe.stderr  # the container's health check passes: no restart needed
    wait_until(lambda: health_check(rt.settings, "scheduler").returncode == 0, timeout=30, interval=1,
               what="the scheduler to register again (it heartbeats when its next sweep is due)")
    assert cron.poll() is None
    assert_no_orphans(rt, world.backend_id, fake_dir)
    assert_none_stuck(rt)

    first_refused, first_accepted = pages[ada].refused_span() or (float("nan"), float("nan"))
    print(f"\nRedis restart: outage {up_at - down_at:.1f} s; Ada's keepalives refused from {first_refused - down_at:+.2f} s "
          f"to {first_accepted - up_at:+.2f} s after the restart ({first_accepted - first_refused:.1f} s of 503s); "
          f"a new lab running {fresh_lab_at - up_at:.1f} s after the restart; the lost jobs' labs running "
          f"{recovered_at - up_at:.1f} s after it (their deadline: {rt.settings.provisioning_deadline} s)")


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in [*sorted(tmp_path.glob("worker-*.log")), tmp_path / "scheduler.log"])
