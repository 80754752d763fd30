"""A lab's states, the moves allowed between them, and the one way to move: compare-and-set.

Each move is a single `UPDATE … WHERE id = ? AND state IN (expected)` plus an event row, in one
transaction. When two workers race, the database lets exactly one UPDATE match; the loser sees
`False` and does nothing. In-progress states get a deadline, which the deadline sweep enforces.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.config import Settings
from broker.errors import InvalidTransition
from broker.models import Lab, LabEvent


class LabState(str, enum.Enum):
    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    RESUMING = "resuming"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


S = LabState
ALLOWED: dict[LabState, frozenset[LabState]] = {
    S.REQUESTED: frozenset({S.PROVISIONING, S.DELETING, S.FAILED}),
    S.PROVISIONING: frozenset({S.RUNNING, S.DELETING, S.FAILED}),
    S.RUNNING: frozenset({S.SUSPENDING, S.DELETING, S.FAILED}),
    S.SUSPENDING: frozenset({S.SUSPENDED, S.DELETING, S.FAILED}),
    S.SUSPENDED: frozenset({S.RESUMING, S.DELETING, S.FAILED}),
    S.RESUMING: frozenset({S.RUNNING, S.DELETING, S.FAILED}),
    S.DELETING: frozenset({S.DELETED, S.FAILED}),
    S.FAILED: frozenset({S.DELETING}),
    S.DELETED: frozenset(),
}

IN_PROGRESS = (S.REQUESTED, S.PROVISIONING, S.SUSPENDING, S.RESUMING, S.DELETING)


def sources_of(target: LabState) -> tuple[LabState, ...]:
    """Every state from which `target` may be reached."""
    return tuple(state for state, targets in ALLOWED.items() if target in targets)


def deadline_for(state: LabState, settings: Settings, now: datetime) -> datetime | None:
    """When a lab entering `state` must have left it, or None for states that may last."""
    if state not in IN_PROGRESS:
        return None
    return now + timedelta(seconds=getattr(settings, f"{state.value}_deadline"))


@dataclass(frozen=True)
class Move:
    """Who asks for a transition and why, recorded in the event row."""

    reason: str
    actor: str = "system"
    job_id: str | None = None


def transition(
    session: Session,
    settings: Settings,
    lab_id: int,
    expected: LabState | Iterable[LabState],
    target: LabState,
    move: Move,
    **fields: Any,
) -> bool:
    """Move one lab from one of `expected` to `target` if it is still there; commit; True if this call won."""
    moved = transition_many(session, settings, [lab_id], expected, target, move, **fields)
    return bool(moved)


def transition_many(
    session: Session,
    settings: Settings,
    lab_ids: list[int],
    expected: LabState | Iterable[LabState],
    target: LabState,
    move: Move,
    commit: bool = True,
    **fields: Any,
) -> list[int]:
    """Compare-and-set for many labs in one statement (the sweeps); returns the ids that moved."""
    sources = (expected,) if isinstance(expected, LabState) else tuple(expected)
    for source in sources:
        if target not in ALLOWED[source]:
            raise InvalidTransition(f"a lab cannot go from {source.value} to {target.value}")
    if not lab_ids:
        return []
    now = utcnow()
    values = dict(
        state=target.value,
        deadline=deadline_for(target, settings, now),
        state_changed_at=now,
        backend_call=None,
        **fields,
    )
    moved: list[tuple[int, str]] = []
    for source in sources:
        for chunk in _chunks(lab_ids, 900):
            result = session.execute(
                update(Lab).where(Lab.id.in_(chunk), Lab.state == source.value).values(**values).returning(Lab.id)
            )
            moved.extend((row[0], source.value) for row in result)
    if moved:
        session.execute(insert(LabEvent), [_event(lab_id, source, target, move, now) for lab_id, source in moved])
    if commit:
        session.commit()
    return [lab_id for lab_id, _ in moved]


def _event(lab_id: int, source: str, target: LabState, move: Move, now: datetime) -> dict[str, Any]:
    return dict(
        lab_id=lab_id,
        from_state=source,
        to_state=target.value,
        reason=move.reason[:500],
        actor=move.actor,
        job_id=move.job_id,
        at=now,
    )


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
