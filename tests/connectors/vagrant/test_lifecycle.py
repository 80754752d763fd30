"""A Vagrant lab's whole life through the broker: real `labdesk worker` processes, PostgreSQL, Redis, a real
Vagrant + vagrant-libvirt booting the tiny guest: launch → running (the sealed endpoint opens the lab with its
own password) → idle → suspended (managed save) → the learner comes back → resumed → reaped → deleted, with
the machine and its directory gone. The background `vagrant up` outlives the rq work-horse that started it."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import paramiko
import pytest
from sqlalchemy import select

from broker import endpoints, schedule, services
from broker.clock import utcnow
from broker.config import Settings
from broker.lifecycle import LabState
from broker.models import Activity, Backend, Lab, LabEvent
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.vagrant import tiny_entry, virsh
from tests.support import waiting
from tests.support.waiting import lab_row as lab
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import make_world

S = LabState


def wait_state(rt: Runtime, lab_id: int, state: LabState, timeout: float = 300) -> Lab:
    return waiting.wait_state(rt, lab_id, state, timeout)


pytestmark = [pytest.mark.vagrant, pytest.mark.libvirt, pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def settings(pg_only: str, tmp_path: Path, redis_client: Any) -> Settings:
    return make_settings(pg_only, tmp_path)


@pytest.fixture
def pool(settings: Settings, tmp_path: Path) -> Iterator[WorkerPool]:
    workers = WorkerPool(settings, tmp_path)
    yield workers
    workers.stop()


def domain_state(backend: dict[str, Any], lab_id: int) -> str:
    options = backend["provider_options"]
    return virsh(options["uri"], "domstate", f"{options['default_prefix']}labdesk-lab-{lab_id}", check=False).strip()


def test_a_vagrant_lab_lives_its_whole_life_through_the_broker(rt: Runtime, pool: WorkerPool, backend: dict[str, Any]) -> None:
    config = dict(backend)
    seed = config.pop("credential_seed")
    world = make_world(rt, kind="vagrant", config=config, backend_name="vagrant", idle_suspend_after=1)
    with rt.session() as session:
        session.get(Backend, world.backend_id).secrets = rt.vault.seal({"credential_seed": seed})
        image = session.get(Activity, world.activity_id).image
        image.spec, image.protocol = tiny_entry().spec(), "ssh"
        session.commit()
    pool.start(2)

    launched = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    running = wait_state(rt, launched.id, S.RUNNING)
    [seen] = endpoints.unseal(rt.vault, running.endpoints)
    assert (seen.protocol, seen.host, seen.username) == ("ssh", "127.0.0.1", "lab")
    assert seen.password and seen.password.encode() not in running.endpoints  # sealed at rest
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(seen.host, seen.port, seen.username, password=seen.password, look_for_keys=False, allow_agent=False, timeout=10)
    client.close()  # what guacd does with the endpoint

    time.sleep(1.5)  # idle past the activity's idle_suspend_after (1 s)
    assert schedule.suspend_idle(rt) == 1
    wait_state(rt, launched.id, S.SUSPENDED)
    assert domain_state(backend, launched.id) == "shut off"  # saved to disk: no memory held meanwhile

    back = services.launch(rt, world.user_id, world.activity_id, "learner-1")
    assert back.id == launched.id
    wait_state(rt, launched.id, S.RUNNING)
    assert domain_state(backend, launched.id) == "running"

    with rt.session() as session:  # weeks unused
        session.get(Lab, launched.id).last_active_at = utcnow() - timedelta(days=15)
        session.commit()
    assert schedule.reap(rt) == 1
    wait_state(rt, launched.id, S.DELETED)
    assert domain_state(backend, launched.id) == ""
    assert not (Path(backend["state_dir"]) / f"labdesk-lab-{launched.id}").exists()
    with rt.session() as session:
        history = list(session.scalars(select(LabEvent.to_state).where(LabEvent.lab_id == launched.id).order_by(LabEvent.id)))
    assert history == ["requested", "provisioning", "running", "suspending", "suspended", "resuming", "running", "deleting", "deleted"]
