"""A Heat lab's whole life through the broker, real rq workers, PostgreSQL and a real Heat engine:
launch → running (endpoint from the stack's outputs, sealed) → idle → suspended → the learner comes back
→ resumed → a keepalive keeps it running → reaped after weeks unused → deleted, with the stack gone.
And a worker SIGKILLed while its stack is being created: the lab is recovered onto the same stack, or,
out of recoveries, failed, after which the reconciler leaves no stack behind.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from broker import activity, endpoints, schedule, services
from broker.clock import utcnow
from broker.config import Settings
from broker.lifecycle import LabState
from broker.models import Activity, Backend, Image, Lab, LabEvent
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.heat import backend_config, heat_client, heat_endpoints, heat_entry, provider
from tests.support import waiting
from tests.support.waiting import lab_row as lab
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, make_world

S = LabState


def wait_state(rt: Runtime, lab_id: int, state: LabState, timeout: float = 60) -> Lab:
    return waiting.wait_state(rt, lab_id, state, timeout)


pytestmark = [pytest.mark.heat, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def settings(pg_only: str, tmp_path: Path, redis_client: Any) -> Settings:
    return make_settings(pg_only, tmp_path, provisioning_deadline=4, orphan_grace=1)


@pytest.fixture
def pool(settings: Settings, tmp_path: Path) -> Iterator[WorkerPool]:
    workers = WorkerPool(settings, tmp_path)
    yield workers
    workers.stop()


def heat_world(rt: Runtime, endpoint: str, **provider_settings: Any) -> tuple[World, dict[str, Any]]:
    """A course whose activity runs the test image on a Heat backend, its seed stored encrypted."""
    config = backend_config([provider(endpoint, "cloud-a", **provider_settings)])
    seed = config.pop("credential_seed")
    world = make_world(rt, kind="heat", config=config, backend_name="heat", idle_suspend_after=1)
    with rt.session() as session:
        session.get(Backend, world.backend_id).secrets = rt.vault.seal({"credential_seed": seed})
        image = session.get(Activity, world.activity_id).image
        image.spec, image.protocol = heat_entry(), "ssh"
        session.commit()
    return world, config


def stacks(endpoint: str, config: dict[str, Any], lab_id: int) -> list[Any]:
    tag = f"{config['name_prefix']}-lab-{lab_id}"
    return [s for s in heat_client(endpoint).stacks.list(tags=tag) if s.stack_status != "DELETE_COMPLETE"]


def history(rt: Runtime, lab_id: int) -> list[str]:
    with rt.session() as session:
        return list(session.scalars(select(LabEvent.to_state).where(LabEvent.lab_id == lab_id).order_by(LabEvent.id)))


def test_a_heat_lab_lives_its_whole_life_through_the_broker(rt: Runtime, pool: WorkerPool) -> None:
    [endpoint] = heat_endpoints(1)
    world, config = heat_world(rt, endpoint)
    pool.start(2)

    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    running = wait_state(rt, launched.id, S.RUNNING)
    [stack] = stacks(endpoint, config, launched.id)
    assert (stack.stack_status, running.handle["stack_id"]) == ("CREATE_COMPLETE", stack.id)
    [seen] = endpoints.unseal(rt.vault, running.endpoints)
    assert (seen.protocol, seen.host, seen.port, seen.username) == ("ssh", "127.0.0.1", 22, "learner")
    assert seen.password and seen.password.encode() not in running.endpoints  # sealed at rest

    time.sleep(1.5)  # idle past the activity's idle_suspend_after (1 s)
    assert schedule.suspend_idle(rt) == 1
    wait_state(rt, launched.id, S.SUSPENDED)
    assert heat_client(endpoint).stacks.get(stack.id).stack_status == "SUSPEND_COMPLETE"

    back = services.launch(rt, world.user_id, world.activity_id, "learner-1")  # the learner comes back
    assert back.id == launched.id
    wait_state(rt, launched.id, S.RUNNING)
    assert heat_client(endpoint).stacks.get(stack.id).stack_status == "RESUME_COMPLETE"
    activity.record_keepalive(rt.redis, launched.id)  # the lab page's keepalive: not idle
    assert schedule.suspend_idle(rt) == 0

    with rt.session() as session:  # weeks unused: older than the activity's reap_after_days (14)
        session.get(Lab, launched.id).last_active_at = utcnow() - timedelta(days=15)
        session.commit()
    assert schedule.reap(rt) == 1
    wait_state(rt, launched.id, S.DELETED)
    assert stacks(endpoint, config, launched.id) == []
    assert history(rt, launched.id) == [
        "requested", "provisioning", "running", "suspending", "suspended", "resuming", "running", "deleting", "deleted",
    ]


def test_a_worker_killed_mid_create_is_recovered_onto_the_same_stack(rt: Runtime, pool: WorkerPool) -> None:
    [endpoint] = heat_endpoints(1)
    world, config = heat_world(rt, endpoint, parameters={"create_seconds": 3})
    [doomed] = pool.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    wait_until(lambda: stacks(endpoint, config, launched.id), timeout=30, what="the stack to be created")

    pool.kill(doomed)  # while Heat is still creating the stack

    wait_until(lambda: schedule.expire_stuck(rt) == 1, timeout=20, what="the deadline sweep to retry the lab")
    pool.start()
    recovered = wait_state(rt, launched.id, S.RUNNING)
    [stack] = stacks(endpoint, config, launched.id)  # find-or-create: still exactly one
    assert recovered.handle["stack_id"] == stack.id and recovered.recoveries == 1


def test_a_worker_killed_mid_create_leaves_no_stack_once_the_reconciler_ran(rt: Runtime, pool: WorkerPool) -> None:
    rt.settings = dataclasses.replace(rt.settings, max_recoveries=0)
    [endpoint] = heat_endpoints(1)
    world, config = heat_world(rt, endpoint, parameters={"create_seconds": 3})
    [doomed] = pool.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    wait_until(lambda: stacks(endpoint, config, launched.id), timeout=30, what="the stack to be created")

    pool.kill(doomed)

    wait_until(lambda: schedule.expire_stuck(rt) == 1, timeout=20, what="the deadline sweep to fail the lab")
    assert lab(rt, launched.id).state == "failed"
    assert len(stacks(endpoint, config, launched.id)) == 1  # the dead job's stack is still there...
    wait_until(
        lambda: schedule.reconcile_backend(rt, world.backend_id)["orphans_deleted"] == 1,
        timeout=20, what="the reconciler to delete the leftover stack after the grace",
    )
    wait_until(lambda: stacks(endpoint, config, launched.id) == [], timeout=30, what="the stack to be deleted")
