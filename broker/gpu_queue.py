"""The GPU queue as labs live it: wait for a unit, start by themselves when one frees up, let it go.

`broker.gpus` keeps the records; this module moves labs. A lab that needs a GPU and has none waits in
its state (requested, or resuming after it let its GPU go) with no deadline and `waiting_for = "gpu"`; its
job ends instead of polling. Whoever frees a unit (a deleted or saved lab, the GPU sweep) runs `dispatch`,
and each lab handed a unit gets its deadline back and its job enqueued again: it starts by itself.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import gpus
from broker.clock import utcnow
from broker.lifecycle import LabState, Move, deadline_for, transition_many
from broker.models import Backend, GpuSlot, Lab
from broker.runtime import Runtime

log = logging.getLogger(__name__)
WAITING = "gpu"


def admit(rt: Runtime, session: Session, lab: Lab) -> bool:
    """Whether `lab` may go on now: it holds a unit, or just got one. Otherwise it is queued."""
    model = gpus.wanted_model(lab)
    if model is None or gpus.held_unit(session, lab.id) is not None:
        return True
    if not gpus.has_inventory(session, lab.backend_id):
        refresh(rt, session, lab.backend)
    gpus.open_request(session, lab, model)
    granted = gpus.dispatch(session, rt.settings, lab.backend_id)
    _wake(rt, session, [lab_id for lab_id in granted if lab_id != lab.id])
    if lab.id in granted:
        return True
    _wait(rt, session, lab)
    return False


def _wait(rt: Runtime, session: Session, lab: Lab) -> None:
    """Park the lab: no deadline (waiting may take long), and the page shows its place in line."""
    status = gpus.queue_status(session, rt.settings, lab) or {}
    session.execute(
        update(Lab).where(Lab.id == lab.id, Lab.state == lab.state, ~select(GpuSlot.id).where(GpuSlot.lab_id == lab.id).exists())
        .values(waiting_for=WAITING, deadline=None, progress=0, message=waiting_message(status))
    )
    session.commit()


def waiting_message(status: dict[str, object]) -> str:
    """The sentence the lab page shows while a lab waits for a GPU."""
    if status.get("blocked"):
        return "Waiting for a GPU: you already use one in another lab. This lab starts when that one is suspended or ended."
    place = status.get("position")
    if not isinstance(place, int):
        return "Waiting for a GPU."
    seconds = status.get("estimate_seconds")
    about = f", about {_duration(seconds)}" if isinstance(seconds, int) else ""
    return f"All GPUs are in use. You are number {place} in line{about}; your lab starts by itself."


def _duration(seconds: int) -> str:
    if seconds < 90:
        return "a minute"
    if seconds < 5400:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


def let_go(rt: Runtime, session: Session, lab: Lab) -> None:
    """Release what `lab` holds or waits for, and hand the unit to whoever is next."""
    if gpus.release(session, lab.id) or gpus.wanted_model(lab) is not None:
        _wake(rt, session, gpus.dispatch(session, rt.settings, lab.backend_id))


def _wake(rt: Runtime, session: Session, lab_ids: list[int]) -> None:
    """Labs that were handed a unit: their deadline back, and their job on its queue again."""
    if not lab_ids:
        return
    from broker.jobs import job_request  # broker.jobs imports this module

    now = utcnow()
    labs = session.scalars(select(Lab).where(Lab.id.in_(lab_ids)).execution_options(populate_existing=True)).all()
    for lab in labs:
        lab.waiting_for, lab.message = None, "A GPU is free: starting your lab."
        lab.deadline = deadline_for(LabState(lab.state), rt.settings, now)
    session.commit()
    for lab in labs:
        # Its own id: the lab's last job may still be finishing (it parked the lab a moment ago), and a
        # wake-up with that job's id would be dropped as a duplicate.
        request = job_request(lab, lab.backend.queue_name)
        rt.dispatcher.enqueue(replace(request, job_id=f"{request.job_id}-gpu-{int(now.timestamp() * 1000)}"))
    log.info("GPU granted to labs %s", lab_ids)


def refresh(rt: Runtime, session: Session, backend: Backend) -> int:
    """Ask the backend for its GPU units and record them (worker or CLI: the web never calls a backend)."""
    return gpus.record_inventory(session, backend.id, rt.connector(backend).gpu_units())


def sweep(rt: Runtime) -> int:
    """The safety net behind the prompt paths: free units that ended labs still hold, delete failed labs
    that hold one (a failed lab is of no use, and its GPU is), and dispatch. Inventories are refreshed by
    each backend's health check, on its own queue (`broker.schedule.check_backend`)."""
    with rt.session() as session:
        for lab_id in gpus.stale_holders(session):
            gpus.release(session, lab_id)
        _wake(rt, session, gpus.parked_holders(session))  # granted, but the wake-up was lost
        _delete_failed_holders(rt, session)
        granted = 0
        for backend_id in session.scalars(select(GpuSlot.backend_id).distinct()).all():
            woken = gpus.dispatch(session, rt.settings, backend_id)
            _wake(rt, session, woken)
            granted += len(woken)
        return granted


def _delete_failed_holders(rt: Runtime, session: Session) -> None:
    from broker.jobs import job_request

    failed = list(session.scalars(
        select(Lab.id).join(GpuSlot, GpuSlot.lab_id == Lab.id).where(Lab.state == LabState.FAILED.value)
    ))
    moved = transition_many(session, rt.settings, failed, LabState.FAILED, LabState.DELETING, Move("failed lab holds a GPU", "sweep"))
    for lab in session.scalars(select(Lab).where(Lab.id.in_(moved))):
        rt.dispatcher.enqueue(job_request(lab, lab.backend.queue_name))


def sweep_job() -> int:
    from broker import runtime

    return sweep(runtime.current())
