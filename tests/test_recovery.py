"""A worker SIGKILLed in the middle of provisioning: the deadline sweep recovers the lab, or fails it once
its recoveries are used up, and the reconciler removes what the dead job left on the backend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from broker import schedule, services
from broker.config import Settings
from broker.lifecycle import LabState
from broker.models import Backend, Lab, LabEvent
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World

S = LabState
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def settings(pg_only: str, tmp_path: Path, redis_client: Any) -> Settings:
    return make_settings(pg_only, tmp_path, provisioning_deadline=2, orphan_grace=1)


@pytest.fixture
def killable(settings: Settings, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(settings, tmp_path)
    yield pool
    pool.stop()


def script_backend(rt: Runtime, world: World, **config: Any) -> None:
    with rt.session() as session:
        backend = session.get(Backend, world.backend_id)
        backend.config = {**{"state_dir": backend.config["state_dir"]}, **config}
        session.commit()


def lab(rt: Runtime, lab_id: int) -> Lab:
    with rt.session() as session:
        return session.get(Lab, lab_id)


def fake_objects(fake_dir: Path) -> set[str]:
    return {p.stem for p in fake_dir.glob("labdesk-lab-*.json")}


def test_a_lab_whose_worker_was_killed_mid_provision_is_recovered(
    rt: Runtime, world: World, killable: WorkerPool, fake_dir: Path, tmp_path: Path
) -> None:
    script_backend(rt, world, call_latency=6)  # every backend call blocks for 6 s, like a slow cloud
    [doomed] = killable.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    wait_until(lambda: lab(rt, launched.id).state == "provisioning", what="the worker to start provisioning")

    killable.kill(doomed)  # inside the 6 s provision call: the backend object was never made

    assert lab(rt, launched.id).state == "provisioning"
    assert fake_objects(fake_dir) == set()
    script_backend(rt, world)  # the cloud answers quickly again
    wait_until(lambda: schedule.expire_stuck(rt) == 1, timeout=10, what="the deadline sweep to retry the lab")
    killable.start()

    wait_until(lambda: lab(rt, launched.id).state == "running", timeout=30, what="the recovered lab to run")
    recovered = lab(rt, launched.id)
    assert recovered.recoveries == 1
    assert fake_objects(fake_dir) == {f"labdesk-lab-{launched.id}"}
    with rt.session() as session:
        reasons = session.scalars(select(LabEvent.reason).where(LabEvent.lab_id == launched.id)).all()
    assert "deadline passed; retrying" in reasons


def test_a_lab_out_of_recoveries_fails_and_its_leftover_object_is_reconciled_away(
    rt: Runtime, world: World, killable: WorkerPool, fake_dir: Path, tmp_path: Path
) -> None:
    rt.settings = dataclasses.replace(rt.settings, max_recoveries=0)
    script_backend(rt, world, call_latency=1.5)
    [doomed] = killable.start()
    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    leftover = f"labdesk-lab-{launched.id}"
    # Provision made the object; the worker dies while it is looking at it.
    wait_until(lambda: leftover in fake_objects(fake_dir), what="the backend object")

    killable.kill(doomed)

    script_backend(rt, world)
    wait_until(lambda: schedule.expire_stuck(rt) == 1, timeout=10, what="the deadline sweep to fail the lab")
    failed = lab(rt, launched.id)
    assert failed.state == "failed"
    assert failed.message == "The lab took too long while provisioning. Reset the lab to try again."

    first = schedule.reconcile_backend(rt, world.backend_id)
    assert first == {"orphans_deleted": 0, "vanished": 0}  # only noted: it may be a lab being created
    assert fake_objects(fake_dir) == {leftover}
    wait_until(
        lambda: schedule.reconcile_backend(rt, world.backend_id)["orphans_deleted"] == 1,
        timeout=10,
        what="the reconciler to delete the leftover after the grace",
    )
    assert fake_objects(fake_dir) == set()
    assert lab(rt, launched.id).state == "failed"
