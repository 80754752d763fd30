"""Labs as the admin console lists them (filters, a page at a time, the total), and acting on many at once.

The list is one query: labs joined to their learner, activity, course and backend, filtered, newest
first, with the total count of matches computed by a window function in the same statement, so a page
and its "N labs" never disagree and the database is asked once.

A bulk action goes through `broker.services.request_state` lab by lab, so each move is the same
compare-and-set as a single one and enqueues the same job. A lab the action does not apply to (already
suspended, a backend that cannot suspend, gone meanwhile) is skipped with its reason; the others go on.
Every lab asked about gets one audit row, skipped ones included, so the log shows what was asked, not
only what happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from broker import audit, services
from broker.clock import utcnow
from broker.connector import Capability
from broker.errors import LabDeskError, UnknownBackend
from broker.lifecycle import ALLOWED, LabState
from broker.models import ENDED_STATES, Activity, Backend, Course, Lab, User
from broker.registry import connector_class
from broker.runtime import Runtime

S = LabState
LIVE_STATES = tuple(s.value for s in S if s.value not in ENDED_STATES)
Action = Literal["suspend", "resume", "delete"]
TARGETS: dict[str, LabState] = {"suspend": S.SUSPENDING, "resume": S.RESUMING, "delete": S.DELETING}
MAX_LIMIT = 500


@dataclass(frozen=True)
class LabRow:
    lab_id: int
    learner: str
    course: str
    activity: str
    backend: str
    state: str
    created_at: datetime
    last_active_at: datetime
    age: timedelta  # since the lab was created
    message: str


@dataclass(frozen=True)
class LabPage:
    rows: list[LabRow]
    total: int  # every lab matching the filters, not only this page


@dataclass
class BulkResult:
    done: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # lab id -> why the action did not apply


def find_labs(
    session: Session,
    *,
    states: list[str] | None = None,
    backend: str | None = None,
    course: int | None = None,
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
    limit: int = 50,
    offset: int = 0,
) -> LabPage:
    """Labs matching every filter given, newest first. `states` defaults to the live ones (not failed,
    deleting or deleted); `backend` is a backend's name, `course` a course id; age is since creation."""
    query = _filtered(states, backend, course, older_than, newer_than)
    rows = session.execute(query.limit(max(1, min(limit, MAX_LIMIT))).offset(max(0, offset))).all()
    now = utcnow()
    page = [
        LabRow(r.id, r.learner, r.course, r.activity, r.backend, r.state, r.created_at, r.last_active_at,
               now - r.created_at, r.message)
        for r in rows
    ]
    if rows:
        return LabPage(page, rows[0].total)
    # An offset past the end returns no rows, and so no total: count separately (rare: a stale page).
    total = session.scalar(select(func.count()).select_from(_filtered(states, backend, course, older_than, newer_than).subquery()))
    return LabPage(page, total or 0)


def _filtered(
    states: list[str] | None, backend: str | None, course: int | None, older_than: timedelta | None, newer_than: timedelta | None
) -> Select:  # type: ignore[type-arg]
    now = utcnow()
    query = (
        select(
            Lab.id, Lab.state, Lab.created_at, Lab.last_active_at, Lab.message,
            func.coalesce(func.nullif(User.name, ""), User.subject).label("learner"),
            Course.title.label("course"), Activity.title.label("activity"), Backend.name.label("backend"),
            func.count().over().label("total"),
        )
        .join(User, Lab.user_id == User.id)
        .join(Activity, Lab.activity_id == Activity.id)
        .join(Course, Activity.course_id == Course.id)
        .join(Backend, Lab.backend_id == Backend.id)
        .where(Lab.state.in_(list(states) if states else LIVE_STATES))
        # Newest first by creation time, not by id: an ordered scan of the primary key would look cheap to
        # PostgreSQL's planner with a LIMIT, but the window count reads every match anyway, so it would walk
        # the whole table's history (25 ms at 200,000 labs); sorting the matches found through the state
        # indexes takes about 1 ms (docs/operations.md).
        .order_by(Lab.created_at.desc(), Lab.id.desc())
    )
    if backend is not None:
        query = query.where(Backend.name == backend)
    if course is not None:
        query = query.where(Activity.course_id == course)
    if older_than is not None:
        query = query.where(Lab.created_at < now - older_than)
    if newer_than is not None:
        query = query.where(Lab.created_at > now - newer_than)
    return query


def bulk_action(rt: Runtime, lab_ids: list[int], action: Action, actor: str, address: str = "") -> BulkResult:
    """Suspend, resume or delete each lab (as `actor`); never fails the whole batch for one lab."""
    target = TARGETS.get(action)
    if target is None:
        raise LabDeskError(f"unknown bulk action {action!r}; expected one of {', '.join(TARGETS)}")
    result = BulkResult()
    for lab_id in dict.fromkeys(lab_ids):  # each lab once, in the order given
        reason = _why_not(rt, lab_id, target)
        if reason is None:
            reason = _request(rt, lab_id, target, actor, action)
        if reason is None:
            result.done.append(lab_id)
        else:
            result.skipped[lab_id] = reason
        _audit(rt, lab_id, action, actor, reason, address)
    return result


def _why_not(rt: Runtime, lab_id: int, target: LabState) -> str | None:
    """Why `target` does not apply to the lab now, or None when it does."""
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None:
            return "no such lab"
        if target not in ALLOWED[S(lab.state)]:
            return f"it is {lab.state}"
        if target == S.SUSPENDING and not _can_suspend(lab.backend.kind):
            return f"its backend ({lab.backend.name}) cannot suspend labs"
        return None


def _can_suspend(kind: str) -> bool:
    """A suspend on a backend without it would fail the lab; the sweep skips such backends too."""
    try:
        return Capability.SUSPEND in connector_class(kind).capabilities
    except UnknownBackend:
        return False


def _request(rt: Runtime, lab_id: int, target: LabState, actor: str, action: str) -> str | None:
    """Ask for the move; a lab that moved on since `_why_not` looked loses the compare-and-set."""
    try:
        lab = services.request_state(rt, lab_id, target, actor=actor, reason=f"{action} by an admin (bulk)")
    except LabDeskError as exc:  # InvalidTransition, NotFound, ServiceUnavailable (the queue is down)
        return str(exc)
    return None if lab.state == target.value else "another change to it came first"


def _audit(rt: Runtime, lab_id: int, action: str, actor: str, skipped: str | None, address: str) -> None:
    with rt.session() as session:
        exists = session.get(Lab, lab_id) is not None
        detail = "done" if skipped is None else f"skipped: {skipped}"
        # A lab id that does not exist cannot be a foreign key; it is kept in the target instead.
        audit.record(session, actor, f"lab.{action}", lab_id=lab_id if exists else None,
                     target="" if exists else f"lab:{lab_id}", detail=detail, address=address)
        session.commit()
