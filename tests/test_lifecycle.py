"""The lab state machine: allowed moves, compare-and-set, events, deadlines, and a real race."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest
from sqlalchemy import select

from broker.clock import utcnow
from broker.errors import InvalidTransition
from broker.lifecycle import ALLOWED, LabState, Move, sources_of, transition
from broker.models import Lab, LabEvent
from broker.runtime import Runtime
from tests.support.world import World

S = LabState


def new_lab(rt: Runtime, world: World, state: LabState = S.RUNNING) -> int:
    with rt.session() as session:
        lab = Lab(user_id=world.user_id, activity_id=world.activity_id, backend_id=world.backend_id, state=state.value)
        session.add(lab)
        session.commit()
        return lab.id


def test_the_documented_life_is_allowed_and_nothing_leaves_deleted() -> None:
    life = [S.REQUESTED, S.PROVISIONING, S.RUNNING, S.SUSPENDING, S.SUSPENDED, S.RESUMING, S.RUNNING, S.DELETING, S.DELETED]
    for here, there in zip(life, life[1:]):
        assert there in ALLOWED[here]
    assert ALLOWED[S.DELETED] == frozenset()
    assert ALLOWED[S.FAILED] == {S.DELETING}
    assert set(sources_of(S.FAILED)) == set(S) - {S.FAILED, S.DELETED}


def test_a_move_records_an_event_and_sets_a_deadline(rt: Runtime, world: World) -> None:
    lab_id = new_lab(rt, world, S.RUNNING)
    with rt.session() as session:
        assert transition(session, rt.settings, lab_id, S.RUNNING, S.SUSPENDING, Move("idle", "sweep", "job-1"))
        lab = session.get(Lab, lab_id)
        session.refresh(lab)
        assert lab.state == "suspending"
        expected = utcnow() + timedelta(seconds=rt.settings.suspending_deadline)
        assert abs((lab.deadline - expected).total_seconds()) < 5
        event = session.scalars(select(LabEvent).where(LabEvent.lab_id == lab_id)).one()
        assert (event.from_state, event.to_state, event.reason, event.actor, event.job_id) == (
            "running", "suspending", "idle", "sweep", "job-1")


def test_a_stale_move_changes_nothing(rt: Runtime, world: World) -> None:
    lab_id = new_lab(rt, world, S.SUSPENDED)
    with rt.session() as session:
        assert not transition(session, rt.settings, lab_id, S.RUNNING, S.SUSPENDING, Move("idle"))
        assert session.get(Lab, lab_id).state == "suspended"
        assert session.scalars(select(LabEvent)).all() == []


def test_a_forbidden_move_is_refused_with_its_reason(rt: Runtime, world: World) -> None:
    lab_id = new_lab(rt, world, S.DELETED)
    with rt.session() as session, pytest.raises(InvalidTransition, match="from deleted to running"):
        transition(session, rt.settings, lab_id, S.DELETED, S.RUNNING, Move("no"))


def _race(url: str, data_dir: str, lab_id: int, start, results) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings
    from broker.db import session_factory
    from pathlib import Path

    settings = make_settings(url, Path(data_dir))
    session = session_factory(url)()
    start.wait()
    results.put(transition(session, settings, lab_id, S.RUNNING, S.SUSPENDING, Move("race", "racer")))


@pytest.mark.postgres
def test_two_processes_racing_for_one_lab_exactly_one_wins(pg_only: str, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    rt = Runtime(make_settings(pg_only, tmp_path), redis=redis_client)
    from tests.support.world import make_world

    world = make_world(rt)
    for _ in range(10):
        lab_id = new_lab(rt, world, S.RUNNING)
        context = multiprocessing.get_context("spawn")
        start, results = context.Barrier(4), context.Queue()
        racers = [context.Process(target=_race, args=(pg_only, str(tmp_path), lab_id, start, results)) for _ in range(4)]
        for racer in racers:
            racer.start()
        outcomes = sorted(results.get(timeout=60) for _ in racers)
        for racer in racers:
            racer.join(timeout=30)
        assert outcomes == [False, False, False, True]
        with rt.session() as session:
            events = session.scalars(select(LabEvent).where(LabEvent.lab_id == lab_id)).all()
            assert len(events) == 1
        with rt.session() as session:
            lab = session.get(Lab, lab_id)
            lab.state = "deleted"
            session.commit()
