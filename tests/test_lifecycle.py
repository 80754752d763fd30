"""The lab state machine: allowed moves, compare-and-set, events, deadlines, and a real race."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
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


def _race(url: str, data_dir: str, lab_ids: list[int], start, results) -> None:  # type: ignore[no-untyped-def]
    """One racer: for each lab, wait until every racer is ready, then try the same move at once."""
    from pathlib import Path

    from broker.db import session_factory
    from tests.conftest import make_settings

    settings = make_settings(url, Path(data_dir))
    session = session_factory(url)()
    for lab_id in lab_ids:
        start.wait()
        results.put((lab_id, transition(session, settings, lab_id, S.RUNNING, S.SUSPENDING, Move("race", "racer"))))


@pytest.mark.postgres
def test_racing_processes_exactly_one_wins_each_lab(pg_only: str, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings
    from tests.support.world import add_learner, make_world

    rt = Runtime(make_settings(pg_only, tmp_path), redis=redis_client)
    world = make_world(rt)
    lab_ids = [new_lab(rt, replace(world, user_id=add_learner(rt, f"racer-{n}")), S.RUNNING) for n in range(20)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    racers = [context.Process(target=_race, args=(pg_only, str(tmp_path), lab_ids, start, results)) for _ in range(4)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=120) for _ in range(4 * len(lab_ids))]
    for racer in racers:
        racer.join(timeout=30)
    winners = sorted(lab_id for lab_id, won in outcomes if won)
    assert winners == sorted(lab_ids)  # every lab moved once, by exactly one racer
    with rt.session() as session:
        events = session.scalars(select(LabEvent).where(LabEvent.to_state == "suspending")).all()
        assert len(events) == len(lab_ids)
