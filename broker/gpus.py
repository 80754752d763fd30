"""GPUs held exclusively by labs, and the fair queue of labs waiting for one (docs/gpus.md).

A backend with GPUs reports its units (`Connector.gpu_units`); `record_inventory` keeps them as `GpuSlot`
rows. A lab whose image needs a GPU opens a `GpuRequest` and waits until `dispatch` hands it a unit. A
unit is taken by one compare-and-set UPDATE on its single holder column (`lab_id`, unique), so two workers
racing for one unit, or one lab in two dispatches at once, can never end with a unit held twice: the
database lets exactly one UPDATE match. The order of service is `broker.gpu_fairness`'s.
"""

from __future__ import annotations

import statistics
from collections import Counter

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.config import Settings
from broker.connector import GpuUnit
from broker.gpu_fairness import Order, Waiting, compatible, estimate_wait, position, service_order
from broker.models import GpuRequest, GpuSlot, Lab

WAITING_STATES = ("requested", "resuming")  # a lab waits for a GPU before it is created or resumed
HISTORY = 100  # released requests the wait estimate looks at


def wanted_model(lab: Lab) -> str | None:
    """The GPU model a lab's image asks for: None for no GPU, "" for any."""
    gpu = ((lab.activity.image.spec or {}).get("resources") or {}).get("gpu", False)
    if gpu is True:
        return ""
    return gpu if isinstance(gpu, str) and gpu else None


def record_inventory(session: Session, backend_id: int, units: list[GpuUnit]) -> int:
    """Store a backend's current units; units no longer reported are kept but never handed out again.

    Workers that start on a backend with no inventory yet all record it at once: the one whose new rows
    lose the race on the unique key writes again over the rows the winner stored."""
    try:
        return _store_inventory(session, backend_id, units)
    except IntegrityError:
        session.rollback()
        return _store_inventory(session, backend_id, units)


def _store_inventory(session: Session, backend_id: int, units: list[GpuUnit]) -> int:
    now = utcnow()
    slots = {slot.key: slot for slot in session.scalars(select(GpuSlot).where(GpuSlot.backend_id == backend_id))}
    for unit in units:
        slot = slots.pop(unit.key, None) or GpuSlot(backend_id=backend_id, key=unit.key)
        slot.host, slot.model, slot.kind = unit.host, unit.model, unit.kind
        slot.address, slot.mdev_type, slot.parent = unit.address, unit.mdev_type, unit.parent
        slot.present, slot.seen_at = True, now
        session.add(slot)
    for gone in slots.values():
        gone.present = False
    session.commit()
    return len(units)


def has_inventory(session: Session, backend_id: int) -> bool:
    return session.scalar(select(func.count()).select_from(GpuSlot).where(GpuSlot.backend_id == backend_id)) > 0


def held_unit(session: Session, lab_id: int) -> GpuUnit | None:
    """The unit a lab holds, as its connector needs it."""
    slot = session.scalar(select(GpuSlot).where(GpuSlot.lab_id == lab_id))
    if slot is None:
        return None
    return GpuUnit(slot.key, slot.host, slot.model, slot.kind, slot.address, slot.mdev_type, slot.parent)


def open_request(session: Session, lab: Lab, model: str) -> GpuRequest:
    """The lab's open request, created (and queued from now) if it has none. A lab that held a unit before
    (saved to disk, GPU let go) asks for that unit first: its saved machine names it."""
    found = session.scalar(select(GpuRequest).where(GpuRequest.lab_id == lab.id, GpuRequest.released_at.is_(None)))
    if found is not None:
        return found
    previous_key = session.scalar(
        select(GpuRequest.slot_key).where(GpuRequest.lab_id == lab.id).order_by(GpuRequest.id.desc()).limit(1)
    ) or ""
    request = GpuRequest(
        lab_id=lab.id, backend_id=lab.backend_id, course_id=lab.activity.course_id, user_id=lab.user_id,
        model=model, previous_key=previous_key,
    )
    session.add(request)
    try:
        session.commit()
    except IntegrityError:  # another job opened it first
        session.rollback()
        return session.scalars(select(GpuRequest).where(GpuRequest.lab_id == lab.id, GpuRequest.released_at.is_(None))).one()
    return request


def release(session: Session, lab_id: int) -> str:
    """Let go of whatever the lab holds or waits for; the key of the unit it held ("" if none)."""
    slot = session.scalar(select(GpuSlot).where(GpuSlot.lab_id == lab_id))
    key = slot.key if slot else ""
    session.execute(update(GpuSlot).where(GpuSlot.lab_id == lab_id).values(lab_id=None, held_since=None))
    session.execute(
        update(GpuRequest).where(GpuRequest.lab_id == lab_id, GpuRequest.released_at.is_(None)).values(released_at=utcnow())
    )
    session.commit()
    return key


def dispatch(session: Session, settings: Settings, backend_id: int) -> list[int]:
    """Hand free units to waiting labs in fair order; the ids of the labs that got one."""
    order = current_order(session, settings, backend_id)
    free = session.scalars(
        select(GpuSlot).where(GpuSlot.backend_id == backend_id, GpuSlot.present.is_(True), GpuSlot.lab_id.is_(None))
        .order_by(GpuSlot.key)
    ).all()
    granted: list[int] = []
    for request in order.served:
        if not free:
            break
        for slot in _preferred(free, _previous_slot(session, backend_id, request.request_id), request.model):
            if _take(session, slot, request):
                free.remove(slot)
                granted.append(request.lab_id)
                break
    return granted


def _preferred(free: list[GpuSlot], previous: GpuSlot | None, model: str) -> list[GpuSlot]:
    """The free units that fit a request. A lab that held a unit before (saved to disk, GPU let go) takes
    that one first, and only units on the same host: its saved machine cannot move to another host."""
    fitting = [slot for slot in free if compatible(model, slot.model)]
    if previous is None:
        return fitting
    return sorted((slot for slot in fitting if slot.host == previous.host), key=lambda slot: slot.key != previous.key)


def _previous_slot(session: Session, backend_id: int, request_id: int) -> GpuSlot | None:
    key = session.scalar(select(GpuRequest.previous_key).where(GpuRequest.id == request_id))
    if not key:
        return None
    return session.scalar(select(GpuSlot).where(GpuSlot.backend_id == backend_id, GpuSlot.key == key))


def _take(session: Session, slot: GpuSlot, request: Waiting) -> bool:
    """Compare-and-set: the unit, if still free, to the request's lab, if it still waits. One transaction."""
    now = utcnow()
    try:
        took = session.execute(
            update(GpuSlot).where(GpuSlot.id == slot.id, GpuSlot.lab_id.is_(None), GpuSlot.present.is_(True))
            .values(lab_id=request.lab_id, held_since=now)
        ).rowcount
        granted = took and session.execute(
            update(GpuRequest).where(GpuRequest.id == request.request_id, GpuRequest.granted_at.is_(None),
                                     GpuRequest.released_at.is_(None))
            .values(granted_at=now, slot_key=slot.key)
        ).rowcount
    except IntegrityError:  # the lab got another unit in a concurrent dispatch (lab_id is unique)
        session.rollback()
        return False
    if not granted:
        session.rollback()
        return False
    session.commit()
    return True


def current_order(session: Session, settings: Settings, backend_id: int) -> Order:
    """The fair service order of the backend's waiting labs, from the holdings of right now."""
    rows = session.execute(
        select(GpuRequest.id, GpuRequest.lab_id, GpuRequest.course_id, GpuRequest.user_id, GpuRequest.model,
               GpuRequest.requested_at)
        .join(Lab, Lab.id == GpuRequest.lab_id)
        .where(GpuRequest.backend_id == backend_id, GpuRequest.granted_at.is_(None), GpuRequest.released_at.is_(None),
               Lab.state.in_(WAITING_STATES))
    ).all()
    holders = session.execute(
        select(GpuRequest.course_id, GpuRequest.user_id, GpuRequest.backend_id)
        .where(GpuRequest.granted_at.is_not(None), GpuRequest.released_at.is_(None))
    ).all()
    by_course = Counter(course for course, _, backend in holders if backend == backend_id)
    by_user = Counter(user for _, user, _ in holders)  # the limit counts GPUs on every backend
    return service_order([Waiting(*row) for row in rows], by_course, by_user, settings.gpu_per_learner)


def queue_status(session: Session, settings: Settings, lab: Lab) -> dict[str, object] | None:
    """Where a waiting lab stands: its place in line and about how long until it starts (for the page)."""
    model = wanted_model(lab)
    if model is None:
        return None
    order = current_order(session, settings, lab.backend_id)
    place = position(order, lab.id)
    if place is None:
        blocked = any(request.lab_id == lab.id for request in order.blocked)
        return {"position": None, "blocked": blocked, "estimate_seconds": None}
    now = utcnow()
    slots = session.scalars(
        select(GpuSlot).where(GpuSlot.backend_id == lab.backend_id, GpuSlot.present.is_(True))
    ).all()
    fitting = [slot for slot in slots if compatible(model, slot.model)]
    held_for = [(now - slot.held_since).total_seconds() for slot in fitting if slot.held_since is not None]
    free = sum(1 for slot in fitting if slot.lab_id is None)
    wait = estimate_wait(place, held_for, free, typical_hold(session, settings, lab.backend_id))
    return {"position": place, "blocked": False, "estimate_seconds": None if wait == float("inf") else round(wait)}


def typical_hold(session: Session, settings: Settings, backend_id: int) -> float:
    """The median time labs of this backend held a GPU lately; the setting's guess without history."""
    rows = session.execute(
        select(GpuRequest.granted_at, GpuRequest.released_at)
        .where(GpuRequest.backend_id == backend_id, GpuRequest.granted_at.is_not(None), GpuRequest.released_at.is_not(None))
        .order_by(GpuRequest.released_at.desc()).limit(HISTORY)
    ).all()
    if not rows:
        return float(settings.gpu_typical_hold)
    return statistics.median((released - granted).total_seconds() for granted, released in rows)


def stale_holders(session: Session) -> list[int]:
    """Labs holding a unit although they ended: their unit is free to go."""
    return list(session.scalars(
        select(GpuSlot.lab_id).join(Lab, Lab.id == GpuSlot.lab_id).where(Lab.state == "deleted")
    ))



def parked_holders(session: Session) -> list[int]:
    """Labs that hold a unit yet are still marked as waiting for one."""
    return list(session.scalars(
        select(Lab.id).join(GpuSlot, GpuSlot.lab_id == Lab.id).where(Lab.waiting_for == "gpu")
    ))
