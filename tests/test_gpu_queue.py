"""GPU labs through real `labdesk worker` processes on PostgreSQL: exclusive units, the visible queue, a lab
that starts by itself when a GPU frees up, the per-learner limit, and keeping or letting go of a GPU when
a lab is suspended. The fake backend records which unit each of its objects was given, so these tests
check exclusivity where it matters: on the backend, not only in the broker's tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from broker import gpu_queue, gpus, jobs, runtime, schedule, services
from broker.config import Settings
from broker.lifecycle import LabState
from broker.models import Activity, Backend, GpuRequest, GpuSlot, Image, Lab
from broker.runtime import Runtime
from tests.support.inline import run_queued_jobs
from tests.support.waiting import wait_until
from tests.test_cli import cli_env, invoke
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner, make_world

pytestmark = pytest.mark.postgres
S = LabState


def units(count: int, model: str = "nvidia-t4") -> list[dict[str, Any]]:
    return [{"key": f"h1/gpu{n}", "host": "h1", "model": model, "address": f"0000:4{n}:00.0"} for n in range(count)]


@pytest.fixture
def db_url(pg_only: str) -> str:
    return pg_only


def gpu_world(rt: Runtime, fake_dir: Path, count: int, gpu: object = "nvidia-t4", **config: Any) -> World:
    world = make_world(rt, config={"state_dir": str(fake_dir), "gpus": units(count), **config})
    with rt.session() as session:
        image = session.get(Activity, world.activity_id).image
        image.spec = {"resources": {"vcpu": 2, "ram_mb": 2048, "disk_gb": 10, "gpu": gpu}}
        session.commit()
    return world


def second_activity(rt: Runtime, world: World) -> int:
    with rt.session() as session:
        first = session.get(Activity, world.activity_id)
        other = Activity(course_id=first.course_id, resource_link_id="link-2", title="Second GPU lab",
                         image_id=first.image_id, backend_id=first.backend_id)
        session.add(other)
        session.commit()
        return other.id


def lab(rt: Runtime, lab_id: int) -> Lab:
    with rt.session() as session:
        found = session.get(Lab, lab_id)
        assert found is not None
        return found


def state_of(rt: Runtime, lab_id: int) -> str:
    return lab(rt, lab_id).state


def backend_gpus(fake_dir: Path) -> dict[int, str | None]:
    """The unit each live object on the fake backend holds, by lab id."""
    records = [json.loads(p.read_text()) for p in fake_dir.glob("labdesk-lab-*.json")]
    return {r["lab_id"]: r.get("gpu") for r in records}


def assert_exclusive(fake_dir: Path) -> None:
    held = [gpu for gpu in backend_gpus(fake_dir).values() if gpu]
    assert len(held) == len(set(held)), f"a GPU serves two labs: {backend_gpus(fake_dir)}"


def launch_many(rt: Runtime, world: World, count: int, prefix: str = "gpu-learner") -> list[int]:
    return [services.launch(rt, add_learner(rt, f"{prefix}-{n}"), world.activity_id, "learner").id for n in range(count)]


def test_labs_beyond_the_gpus_wait_in_line_and_start_by_themselves(
    rt: Runtime, fake_dir: Path, workers: WorkerPool
) -> None:
    world = gpu_world(rt, fake_dir, 2)
    workers.start()
    first, second, third = launch_many(rt, world, 3)
    for lab_id in (first, second):
        wait_until(lambda lab_id=lab_id: state_of(rt, lab_id) == "running", timeout=30, what="a GPU lab running")
    waiting = wait_until(lambda: lab(rt, third).waiting_for == "gpu" and lab(rt, third), what="the third lab queued")
    assert waiting.state == "requested" and waiting.deadline is None  # waiting may take long: no deadline
    assert waiting.message == "All GPUs are in use. You are number 1 in line, about 30 minutes; your lab starts by itself."
    assert set(backend_gpus(fake_dir)) == {first, second}  # nothing was created for the waiting lab
    assert_exclusive(fake_dir)

    services.request_state(rt, first, S.DELETING, "learner-0", "learner reset")
    wait_until(lambda: state_of(rt, third) == "running", timeout=30, what="the queued lab started by itself")
    assert lab(rt, third).waiting_for is None
    assert_exclusive(fake_dir)
    with rt.session() as session:
        held = dict(session.execute(select(GpuSlot.lab_id, GpuSlot.key).where(GpuSlot.lab_id.is_not(None))).all())
    assert backend_gpus(fake_dir) == held  # the broker's records and the backend agree


def test_concurrent_launches_on_several_workers_never_share_a_gpu(
    rt: Runtime, fake_dir: Path, workers: WorkerPool
) -> None:
    world = gpu_world(rt, fake_dir, 3)
    launched = launch_many(rt, world, 12)
    workers.start(4)  # four workers take the twelve jobs at once
    wait_until(lambda: sum(state_of(rt, l) == "running" for l in launched) == 3, timeout=40, what="three running")
    queued = wait_until(lambda: sum(lab(rt, l).waiting_for == "gpu" for l in launched) == 9, timeout=40, what="nine queued")
    assert_exclusive(fake_dir)
    running = [l for l in launched if state_of(rt, l) == "running"]
    for lab_id in running:  # end them one after the other: each frees a unit for the next in line
        services.request_state(rt, lab_id, S.DELETING, "learner", "done")
    wait_until(lambda: sum(state_of(rt, l) == "running" for l in launched) == 3, timeout=40, what="the next three")
    assert_exclusive(fake_dir)
    with rt.session() as session:
        grants = session.scalars(select(GpuRequest).where(GpuRequest.granted_at.is_not(None))).all()
        assert len(grants) == 6
        open_holds = [r.slot_key for r in grants if r.released_at is None]
        assert sorted(open_holds) == ["h1/gpu0", "h1/gpu1", "h1/gpu2"]


def test_workers_recording_a_new_backends_gpus_at_once_all_go_on(rt: Runtime, fake_dir: Path) -> None:
    """Every worker that meets a backend with no inventory records it; the one that loses the race on the
    unique key must not fail its lab's job (a failed job leaves the lab neither queued nor started)."""
    world = gpu_world(rt, fake_dir, 2)
    found = [gpus.GpuUnit(u["key"], u["host"], u["model"], "pci", u["address"], "", "") for u in units(2)]
    with rt.session() as loser:
        raced = []

        def the_other_worker_commits_first(session: Any, *_: Any) -> None:
            if not raced:
                raced.append(True)
                with rt.session() as winner:
                    gpus.record_inventory(winner, world.backend_id, found)

        event.listen(loser, "before_flush", the_other_worker_commits_first)
        assert gpus.record_inventory(loser, world.backend_id, found) == 2
    assert raced
    with rt.session() as session:
        assert sorted(session.scalars(select(GpuSlot.key).where(GpuSlot.backend_id == world.backend_id))) == ["h1/gpu0", "h1/gpu1"]


def test_a_learner_gets_one_gpu_at_a_time(rt: Runtime, fake_dir: Path, workers: WorkerPool) -> None:
    world = gpu_world(rt, fake_dir, 2)
    other_activity = second_activity(rt, world)
    workers.start()
    first = services.launch(rt, world.user_id, world.activity_id, "learner").id
    wait_until(lambda: state_of(rt, first) == "running", timeout=30, what="the first GPU lab")
    second = services.launch(rt, world.user_id, other_activity, "learner").id
    held_back = wait_until(lambda: lab(rt, second).waiting_for == "gpu" and lab(rt, second), what="the second held back")
    assert held_back.message.startswith("Waiting for a GPU: you already use one in another lab.")
    assert len(backend_gpus(fake_dir)) == 1  # a unit was free, yet the limit kept it for others

    services.request_state(rt, first, S.SUSPENDING, "learner", "left")  # keep policy: still holds the GPU
    wait_until(lambda: state_of(rt, first) == "suspended", timeout=30, what="first suspended")
    assert lab(rt, second).state == "requested"
    services.request_state(rt, first, S.DELETING, "learner", "reset")
    wait_until(lambda: state_of(rt, second) == "running", timeout=30, what="the second starts once the first ended")


def test_a_saved_lab_lets_its_gpu_go_and_queues_again_to_resume(
    rt: Runtime, fake_dir: Path, workers: WorkerPool
) -> None:
    world = gpu_world(rt, fake_dir, 1, gpu_on_suspend="release")
    workers.start()
    first, second = launch_many(rt, world, 2)
    wait_until(lambda: state_of(rt, first) == "running", timeout=30, what="first running")
    wait_until(lambda: lab(rt, second).waiting_for == "gpu", what="second queued")

    services.request_state(rt, first, S.SUSPENDING, "learner", "left")
    wait_until(lambda: state_of(rt, second) == "running", timeout=30, what="the freed GPU went to the next in line")
    assert state_of(rt, first) == "suspended"
    assert_exclusive(fake_dir)

    services.request_state(rt, first, S.RESUMING, "learner", "came back")
    back = wait_until(lambda: lab(rt, first).waiting_for == "gpu" and lab(rt, first), what="resume waits for a GPU")
    assert back.state == "resuming" and "number 1 in line" in back.message
    services.request_state(rt, second, S.DELETING, "learner", "done")
    wait_until(lambda: state_of(rt, first) == "running", timeout=30, what="resumed on the freed GPU")
    assert backend_gpus(fake_dir)[first] == "h1/gpu0"


def test_the_sweep_frees_what_failed_and_ended_labs_hold(rt: Runtime, fake_dir: Path, workers: WorkerPool) -> None:
    world = gpu_world(rt, fake_dir, 1)
    workers.start()
    [holder] = launch_many(rt, world, 1)
    wait_until(lambda: state_of(rt, holder) == "running", timeout=30, what="running")
    with rt.session() as session:  # the lab failed (the deadline sweep, say): nobody let the GPU go
        session.get(Lab, holder).state = "failed"
        session.commit()
    [waiting] = launch_many(rt, world, 1, prefix="next")
    wait_until(lambda: lab(rt, waiting).waiting_for == "gpu", what="queued behind the failed lab")

    gpu_queue.sweep(rt)  # deletes the failed lab; its deletion lets the unit go to the waiting lab
    wait_until(lambda: state_of(rt, holder) == "deleted", timeout=30, what="failed GPU lab deleted")
    wait_until(lambda: state_of(rt, waiting) == "running", timeout=30, what="the waiting lab got the unit")


def test_the_health_check_records_the_inventory_and_a_vanished_unit_is_never_handed_out(
    rt: Runtime, fake_dir: Path
) -> None:
    world = gpu_world(rt, fake_dir, 2)
    assert schedule.check_backend(rt, world.backend_id)
    with rt.session() as session:
        assert sorted(session.scalars(select(GpuSlot.key).where(GpuSlot.present.is_(True)))) == ["h1/gpu0", "h1/gpu1"]
        backend = session.get(Backend, world.backend_id)
        backend.config = {**backend.config, "gpus": units(1)}
        session.commit()
    assert schedule.check_backend(rt, world.backend_id)
    with rt.session() as session:
        assert dict(session.execute(select(GpuSlot.key, GpuSlot.present)).all()) == {"h1/gpu0": True, "h1/gpu1": False}
        lab_one = services.launch(rt, world.user_id, world.activity_id, "learner")
        lab_two = services.launch(rt, add_learner(rt, "b"), world.activity_id, "learner")
        for launched in (lab_one, lab_two):
            gpus.open_request(session, session.get(Lab, launched.id), "nvidia-t4")
        assert gpus.dispatch(session, rt.settings, world.backend_id) == [lab_one.id]


def test_a_lab_asking_for_another_model_waits_even_with_units_free(rt: Runtime, fake_dir: Path) -> None:
    world = gpu_world(rt, fake_dir, 2, gpu="nvidia-a100")
    schedule.check_backend(rt, world.backend_id)
    launched = services.launch(rt, world.user_id, world.activity_id, "learner")
    with rt.session() as session:
        row = session.get(Lab, launched.id)
        assert gpu_queue.admit(rt, session, row) is False
        session.refresh(row)
        assert row.waiting_for == "gpu"
        assert gpus.queue_status(session, rt.settings, row) == {"position": 1, "blocked": False, "estimate_seconds": None}
        assert row.message == "All GPUs are in use. You are number 1 in line; your lab starts by itself."
        assert session.scalar(select(Image.slug)) == "img-fake"


def test_the_gpus_command_shows_units_holders_and_the_line(rt: Runtime, settings: Settings, fake_dir: Path) -> None:
    world = gpu_world(rt, fake_dir, 1)
    env = cli_env(settings)
    refreshed = invoke(env, "gpus", "refresh", "fake")
    assert (refreshed.exit_code, refreshed.output) == (0, "fake: 1 GPU units\n")
    runtime.install(rt)
    first, second = launch_many(rt, world, 2)
    run_queued_jobs(rt)  # the first takes the unit and runs; the second waits
    listed = invoke(env, "gpus", "list", "fake")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        f"h1/gpu0  nvidia-t4        pci   lab {first}",
        "waiting:",
        f"1. lab {second} (course {world.course_id}, nvidia-t4) since {lab(rt, second).created_at.isoformat(timespec='seconds')}",
    ]
    unknown = invoke(env, "gpus", "list", "nope")
    assert unknown.exit_code == 1 and "no backend named 'nope'" in unknown.output


def test_a_backend_event_fails_a_running_lab_whose_machine_vanished_at_once(rt: Runtime, fake_dir: Path) -> None:
    world = make_world(rt, config={"state_dir": str(fake_dir)})
    runtime.install(rt)
    launched = services.launch(rt, world.user_id, world.activity_id, "learner")
    run_queued_jobs(rt)
    assert state_of(rt, launched.id) == "running"
    jobs.nudge_lab(launched.id)  # an event with nothing wrong: nothing changes
    assert state_of(rt, launched.id) == "running"

    (fake_dir / f"labdesk-lab-{launched.id}.json").unlink()  # the machine was destroyed behind our back
    rt.dispatcher.enqueue(jobs.nudge_request(launched.id, "labdesk-backend-fake", 1))
    run_queued_jobs(rt)
    failed = lab(rt, launched.id)
    assert (failed.state, failed.message) == ("failed", "The lab machine stopped unexpectedly. Reset the lab to start again.")


def test_a_saved_lab_waits_for_a_unit_on_its_own_host(rt: Runtime, fake_dir: Path) -> None:
    """Its saved machine cannot move hosts: a free unit elsewhere does not help it."""
    two_hosts = [{"key": "h1/gpu0", "host": "h1", "model": "nvidia-t4"}, {"key": "h2/gpu0", "host": "h2", "model": "nvidia-t4"}]
    world = gpu_world(rt, fake_dir, 0)
    with rt.session() as session:
        backend = session.get(Backend, world.backend_id)
        backend.config = {**backend.config, "gpus": two_hosts}
        session.commit()
    schedule.check_backend(rt, world.backend_id)
    saved, other = (services.launch(rt, add_learner(rt, who), world.activity_id, "learner").id for who in ("saver", "other"))
    with rt.session() as session:
        for lab_id in (saved, other):
            gpus.open_request(session, session.get(Lab, lab_id), "nvidia-t4")
        assert sorted(gpus.dispatch(session, rt.settings, world.backend_id)) == sorted([saved, other])
        assert gpus.held_unit(session, saved).host == "h1"  # first come, first unit (keys in order)
        gpus.release(session, saved)  # saved to disk, GPU let go...
        gpus.release(session, other)
        newcomer = services.launch(rt, add_learner(rt, "newcomer"), world.activity_id, "learner").id
        gpus.open_request(session, session.get(Lab, newcomer), "nvidia-t4")
        assert gpus.dispatch(session, rt.settings, world.backend_id) == [newcomer]  # ...and h1's unit went to a newcomer
        assert gpus.held_unit(session, newcomer).host == "h1"
        session.get(Lab, saved).state = "resuming"
        session.commit()
        gpus.open_request(session, session.get(Lab, saved), "nvidia-t4")  # it comes back
        assert gpus.dispatch(session, rt.settings, world.backend_id) == []  # h2 is free, but not its host
        gpus.release(session, newcomer)
        assert gpus.dispatch(session, rt.settings, world.backend_id) == [saved]
        assert gpus.held_unit(session, saved).key == "h1/gpu0"
