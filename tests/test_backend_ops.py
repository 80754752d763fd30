"""broker.backend_ops: capacity, draining and prices set by an admin (validated, audited), and the broker
honouring them: a draining backend, or one at its capacity, starts no new lab (the learner waits as for a
full backend), while the labs it holds live on. Jobs run on the real rq queues with an in-process
SimpleWorker; SQLite and PostgreSQL, plus a race for the last place on PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import Result
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import backend_ops, jobs, runtime, services
from broker.backend_ops import InvalidSetting
from broker.errors import LabDeskError
from broker.lifecycle import LabState
from broker.models import Activity, AuditEvent, Backend, Lab
from broker.runtime import Runtime
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import World, add_learner

S = LabState


def launch(rt: Runtime, world: World, learner: str) -> int:
    user_id = world.user_id if learner == "learner-1" else add_learner(rt, learner)
    lab_id = services.launch(rt, user_id, world.activity_id, learner).id
    run_queued_jobs(rt)
    return lab_id


def lab_row(rt: Runtime, lab_id: int) -> Lab:
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        session.expunge(lab)
        return lab


def give_every_lab_a_gpu(session: Session, world: World, units: int) -> None:
    """The world's backend gets `units` GPUs and its image asks for one: capacity, not GPUs, is the limit."""
    backend = session.get(Backend, world.backend_id)
    backend.config = {**backend.config, "gpus": [
        {"key": f"h1/gpu{n}", "host": "h1", "model": "nvidia-t4", "address": f"0000:4{n}:00.0"} for n in range(units)]}
    activity = session.get(Activity, world.activity_id)
    activity.image.spec = {**(activity.image.spec or {}), "resources": {"vcpu": 1, "ram_mb": 512, "gpu": "nvidia-t4"}}
    session.commit()


def audit_rows(rt: Runtime) -> list[tuple[str, str, str, str]]:
    with rt.session() as session:
        return [(e.actor, e.action, e.target, e.detail) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_settings_are_validated_and_audited(rt: Runtime, world: World) -> None:
    with rt.session() as session:
        for bad in (-1, 1.5, True, "3"):
            with pytest.raises(InvalidSetting, match="capacity must be a whole number"):
                backend_ops.set_capacity(session, "fake", bad, "admin:ann")  # type: ignore[arg-type]
        for bad_price in (-0.1, float("nan"), float("inf")):
            with pytest.raises(InvalidSetting, match="hourly price must be a number"):
                backend_ops.set_prices(session, "fake", bad_price, None, "admin:ann")
        with pytest.raises(LabDeskError, match="no backend named 'nope'"):
            backend_ops.set_draining(session, "nope", True, "admin:ann")
        assert audit_rows(rt) == []  # nothing refused leaves a trace of a change

        backend_ops.set_capacity(session, "fake", 3, "admin:ann", address="192.0.2.7")
        backend_ops.set_capacity(session, "fake", None, "admin:ann")
        backend_ops.set_draining(session, "fake", True, "cli:root")
        backend_ops.set_draining(session, "fake", False, "cli:root")
        backend_ops.set_prices(session, "fake", 0.42, 0, "admin:ann")
    with rt.session() as session:
        backend = session.get(Backend, world.backend_id)
        assert (backend.capacity, backend.draining, backend.hourly_price, backend.suspended_hourly_price) == (None, False, 0.42, 0.0)
        assert session.scalar(select(AuditEvent.address).where(AuditEvent.action == "backend.capacity")) == "192.0.2.7"
    assert audit_rows(rt) == [
        ("admin:ann", "backend.capacity", "backend:fake", "capacity none -> 3"),
        ("admin:ann", "backend.capacity", "backend:fake", "capacity 3 -> none"),
        ("cli:root", "backend.drain", "backend:fake", "takes no new labs"),
        ("cli:root", "backend.undrain", "backend:fake", "takes new labs again"),
        ("admin:ann", "backend.prices", "backend:fake", "running 0.42/h, suspended 0/h"),
    ]


def test_a_backend_at_its_capacity_starts_no_new_lab_until_a_place_frees(rt: Runtime, world: World) -> None:
    with rt.session() as session:
        backend_ops.set_capacity(session, "fake", 1, "admin:ann")
    first = launch(rt, world, "learner-1")
    row = lab_row(rt, first)
    assert row.state == "running"

    second = launch(rt, world, "learner-2")
    waiting = lab_row(rt, second)
    assert (waiting.state, waiting.waiting_for) == ("requested", "capacity")
    assert waiting.message == backend_ops.BUSY_MESSAGE  # what the lab page already shows for a full backend
    scheduled = ScheduledJobRegistry("labdesk-backend-fake", connection=rt.redis)
    assert len(scheduled.get_job_ids()) == 1  # its job tries again later, like for a connector's CapacityError

    # A suspended lab still holds its place: the waiting lab still waits, and the first one resumes.
    services.request_state(rt, first, S.SUSPENDING, "admin:ann", "test")
    run_queued_jobs(rt)
    assert lab_state(rt, first) == "suspended"
    assert jobs.advance_lab(second, "requested") is not None and lab_state(rt, second) == "requested"
    with rt.session() as session:
        assert [(s.name, s.capacity, s.holding) for s in backend_ops.statuses(session)] == [("fake", 1, 1)]
    services.launch(rt, world.user_id, world.activity_id, "learner-1")  # the first learner comes back
    run_queued_jobs(rt)
    assert lab_state(rt, first) == "running"

    services.request_state(rt, first, S.DELETING, "admin:ann", "test")
    run_queued_jobs(rt)
    assert jobs.advance_lab(second, "requested") is None
    ready = lab_row(rt, second)
    assert (ready.state, ready.waiting_for) == ("running", None)


def test_a_draining_backend_starts_no_new_lab_but_its_labs_live_on(rt: Runtime, world: World) -> None:
    first = launch(rt, world, "learner-1")
    with rt.session() as session:
        backend_ops.set_draining(session, "fake", True, "admin:ann")
    second = launch(rt, world, "learner-2")
    assert (lab_row(rt, second).state, lab_row(rt, second).waiting_for) == ("requested", "capacity")

    services.request_state(rt, first, S.SUSPENDING, "admin:ann", "test")
    run_queued_jobs(rt)
    services.launch(rt, world.user_id, world.activity_id, "learner-1")
    run_queued_jobs(rt)
    assert lab_state(rt, first) == "running"  # resumed on the draining backend

    with rt.session() as session:
        backend_ops.set_capacity(session, "fake", 0, "admin:ann")  # 0 is a real limit, not "none"
        backend_ops.set_draining(session, "fake", False, "admin:ann")
    assert jobs.advance_lab(second, "requested") is not None and lab_state(rt, second) == "requested"
    with rt.session() as session:
        backend_ops.set_capacity(session, "fake", None, "admin:ann")
    assert jobs.advance_lab(second, "requested") is None
    assert lab_state(rt, second) == "running"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("needs_gpu", [False, True], ids=["plain", "gpu"])
def test_two_workers_never_both_take_the_last_place(rt: Runtime, world: World, needs_gpu: bool) -> None:
    """The GPU variant: granting a unit commits between the capacity count and the move to provisioning."""
    with rt.session() as session:
        backend_ops.set_capacity(session, "fake", 2, "admin:ann")
        if needs_gpu:
            give_every_lab_a_gpu(session, world, units=8)
    lab_ids = []
    for n in range(8):
        user_id = add_learner(rt, f"racer-{n}")
        lab_ids.append(services.launch(rt, user_id, world.activity_id, f"racer-{n}").id)
    gate = threading.Barrier(len(lab_ids))
    errors: list[BaseException] = []

    def drive(lab_id: int) -> None:
        try:
            gate.wait()
            jobs.advance_lab(lab_id, "requested")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(lab_id,)) for lab_id in lab_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    states = sorted(lab_state(rt, lab_id) or "" for lab_id in lab_ids)
    assert states == ["requested"] * 6 + ["running"] * 2



def test_the_cli_sets_and_shows_them(rt: Runtime, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli import cli_env, invoke

    monkeypatch.chdir(tmp_path)
    env = cli_env(rt.settings)

    def labdesk(*args: str) -> Result:
        try:
            return invoke(env, *args)
        finally:
            runtime.install(rt)

    assert labdesk("backends", "capacity", "fake", "4").exit_code == 0
    assert labdesk("backends", "drain", "fake").output == "backend fake is draining: it takes no new labs\n"
    assert labdesk("backends", "price", "fake", "0.2", "none").exit_code == 0
    status = labdesk("backends", "status", "--json")
    assert status.exit_code == 0, status.output
    assert [(r["name"], r["capacity"], r["draining"], r["hourly_price"], r["suspended_hourly_price"], r["holding"])
            for r in json.loads(status.output)] == [("fake", 4, True, 0.2, None, 0)]
    assert labdesk("backends", "undrain", "fake").exit_code == 0
    assert labdesk("backends", "capacity", "fake", "none").exit_code == 0
    refused = labdesk("backends", "capacity", "fake", "--", "-2")
    assert refused.exit_code == 1 and refused.stderr.startswith("error: capacity must be a whole number")
    assert labdesk("backends", "capacity", "fake", "lots").exit_code == 2  # click's usage error
    assert labdesk("backends", "drain", "nope").stderr == "error: no backend named 'nope'\n"
    with rt.session() as session:
        backend = session.get(Backend, world.backend_id)
        assert (backend.capacity, backend.draining) == (None, False)
    actions = [action for _, action, _, _ in audit_rows(rt)]
    assert actions == ["backend.capacity", "backend.drain", "backend.prices", "backend.undrain", "backend.capacity"]
    assert all(actor.startswith("cli:") for actor, _, _, _ in audit_rows(rt))
