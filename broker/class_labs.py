"""What an instructor does to their class's labs: suspend or reset one learner's lab, and suspend every
running lab of an activity at once ("after class").

Each goes through `broker.services`, like the learner's and the admin's own actions, so the jobs reach
the backends through the queues and every change is a lab event with the instructor as its actor.
Who may call these is the web's business (lti/dashboard.py checks the course first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from broker import launch_gate, services
from broker.errors import InvalidTransition
from broker.lifecycle import LabState
from broker.models import ENDED_STATES, Lab
from broker.runtime import Runtime

S = LabState


@dataclass
class BulkSuspend:
    """What a "Suspend all" did: the labs it suspended, and the live labs it left as they were (already
    suspended or suspending, starting, resuming, being deleted)."""

    suspended: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


def suspend(rt: Runtime, lab_id: int, actor: str) -> Lab:
    """Suspend one learner's running lab; raises InvalidTransition when it is not running."""
    return services.request_state(rt, lab_id, S.SUSPENDING, actor, "suspended by an instructor")


def reset(rt: Runtime, lab_id: int, actor: str) -> Lab:
    """What the learner's "Reset lab…" does (`services.reset`), asked by the instructor: the lab is
    deleted and a fresh one started from the activity's image for the same learner. Returns the new lab."""
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.state in ENDED_STATES:
            raise services.NotFound(f"no live lab {lab_id}")
        user_id, activity_id = lab.user_id, lab.activity_id
        launch_gate.check(session, user_id, activity_id, actor)  # the learner's limits: refused before the lab goes
    services.request_state(rt, lab_id, S.DELETING, actor, "reset by an instructor")
    return services.launch(rt, user_id, activity_id, actor)


def suspend_all(rt: Runtime, activity_ids: list[int], actor: str) -> BulkSuspend:
    """Suspend every running lab of these activities; live labs in any other state are skipped, and so
    is a lab that left `running` between the query and its turn (a learner's idle suspend, say)."""
    result = BulkSuspend()
    for lab_id, state in _live_labs(rt, activity_ids):
        if state != S.RUNNING.value:
            result.skipped.append(lab_id)
            continue
        try:
            moved = suspend(rt, lab_id, actor)
        except InvalidTransition:
            moved = None
        (result.suspended if moved is not None and moved.state == S.SUSPENDING.value else result.skipped).append(lab_id)
    return result


def _live_labs(rt: Runtime, activity_ids: list[int]) -> list[tuple[int, str]]:
    with rt.session() as session:
        rows = session.execute(
            select(Lab.id, Lab.state).where(Lab.activity_id.in_(activity_ids), Lab.state.not_in(ENDED_STATES)).order_by(Lab.id)
        ).all()
        return [(lab_id, state) for lab_id, state in rows]
