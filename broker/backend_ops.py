"""What an admin sets on a backend (enabled, capacity, draining, prices), and the admission rule that
honours it.

Capacity counts the labs a backend *holds*: every lab past `requested` and not yet deleted or failed,
suspended ones included, because a suspended lab keeps its disk (or its stack) there and resumes there
without asking again. So the limit is checked once, when a new lab would start provisioning; a resume is
never refused, and a running lab is never touched. A draining backend starts no new lab at all; labs it
holds live out their life (suspend, resume, delete) as usual.

A disabled backend is out of service, a stronger word than draining: it starts no new lab either, and
learners cannot open or resume labs there (broker.services refuses the launch with a message for them);
its labs can still be suspended and deleted, and the periodic health checks and reconciliation skip it.

A lab refused here waits exactly as for a connector's `CapacityError` (broker.jobs): it stays `requested`
with `waiting_for = "capacity"`, the learner sees that all lab machines are busy, and its job retries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import audit
from broker.errors import CapacityError, LabDeskError
from broker.lifecycle import LabState
from broker.models import Backend, Lab

S = LabState
# States in which a lab holds something on its backend (see the module's docstring).
HOLDING = tuple(s.value for s in (S.PROVISIONING, S.RUNNING, S.SUSPENDING, S.SUSPENDED, S.RESUMING, S.DELETING))
BUSY_MESSAGE = "All lab machines are busy; try again shortly."
DISABLED_MESSAGE = "The machines for this lab are switched off by the administrators; it starts once they are back on."


class InvalidSetting(LabDeskError):
    """A capacity or price an admin typed that cannot be used; the message says why."""


@dataclass(frozen=True)
class BackendStatus:
    """A backend as the admin console lists it: its settings and how many labs it holds now."""

    id: int
    name: str
    kind: str
    enabled: bool
    draining: bool
    capacity: int | None
    holding: int
    hourly_price: float | None
    suspended_hourly_price: float | None


def statuses(session: Session) -> list[BackendStatus]:
    """Every backend with the number of labs it holds (one grouped query)."""
    counts = dict(
        session.execute(select(Lab.backend_id, func.count()).where(Lab.state.in_(HOLDING)).group_by(Lab.backend_id)).all()
    )
    return [
        BackendStatus(b.id, b.name, b.kind, b.enabled, b.draining, b.capacity, counts.get(b.id, 0), b.hourly_price,
                      b.suspended_hourly_price)
        for b in session.scalars(select(Backend).order_by(Backend.name))
    ]


def set_capacity(session: Session, name: str, capacity: int | None, actor: str, address: str = "") -> Backend:
    """Limit how many labs the backend holds at once; None gives the limit back to the backend itself.

    Lowering it below what the backend holds now removes nothing: new labs wait until enough have gone."""
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0):
        raise InvalidSetting(f"capacity must be a whole number of labs, 0 or more (or none), not {capacity!r}")
    backend = _backend(session, name)
    before, backend.capacity = backend.capacity, capacity
    _audit(session, actor, "backend.capacity", backend, f"capacity {_shown(before)} -> {_shown(capacity)}", address)
    return backend


def set_draining(session: Session, name: str, draining: bool, actor: str, address: str = "") -> Backend:
    """Drain (no new labs; those it holds finish their life) or take new labs again."""
    backend = _backend(session, name)
    backend.draining = draining
    action = "backend.drain" if draining else "backend.undrain"
    _audit(session, actor, action, backend, "takes no new labs" if draining else "takes new labs again", address)
    return backend


def set_enabled(session: Session, name: str, enabled: bool, actor: str, address: str = "") -> Backend:
    """Put a backend out of service (no new labs, no launches or resumes; its labs can still be
    suspended and deleted) or back in service."""
    backend = _backend(session, name)
    backend.enabled = enabled
    action = "backend.enable" if enabled else "backend.disable"
    _audit(session, actor, action, backend, "in service" if enabled else "out of service: no new labs, no launches", address)
    return backend


def set_prices(
    session: Session, name: str, hourly: float | None, suspended_hourly: float | None, actor: str, address: str = ""
) -> Backend:
    """Set the prices the cost view uses, per lab-hour running and suspended; None means unknown (no
    cost is shown for those hours), which is not the same as 0 (free)."""
    for label, price in (("hourly price", hourly), ("suspended hourly price", suspended_hourly)):
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0):
            raise InvalidSetting(f"{label} must be a number, 0 or more (or none), not {price!r}")
    backend = _backend(session, name)
    backend.hourly_price = None if hourly is None else float(hourly)
    backend.suspended_hourly_price = None if suspended_hourly is None else float(suspended_hourly)
    detail = f"running {_shown(hourly)}/h, suspended {_shown(suspended_hourly)}/h"
    _audit(session, actor, "backend.prices", backend, detail, address)
    return backend


def admit_new_lab(session: Session, lab: Lab) -> None:
    """Raise `CapacityError` when the lab's backend may not start another lab now (disabled, draining, or
    at the capacity an admin set); return quietly otherwise. A lab requested just before its backend was
    disabled waits, saying so, until the backend is back or the lab's deadline fails it.

    With a capacity set, the backend's row is locked (`SELECT … FOR UPDATE` on PostgreSQL) until the
    caller's transaction ends, so two workers cannot both take the last place; the caller's transition
    out of `requested` commits and releases it. SQLite runs one writer at a time and ignores the lock."""
    backend = session.execute(
        select(Backend.enabled, Backend.draining, Backend.capacity).where(Backend.id == lab.backend_id)
    ).one()
    if not backend.enabled:
        raise CapacityError(f"backend {lab.backend_id} is disabled", DISABLED_MESSAGE)
    if backend.draining:
        raise CapacityError(f"backend {lab.backend_id} is draining", BUSY_MESSAGE)
    if backend.capacity is None:
        return
    session.execute(select(Backend.id).where(Backend.id == lab.backend_id).with_for_update())
    holding = session.scalar(
        select(func.count()).select_from(Lab).where(Lab.backend_id == lab.backend_id, Lab.state.in_(HOLDING))
    )
    if (holding or 0) >= backend.capacity:
        raise CapacityError(f"backend {lab.backend_id} holds {holding} of its {backend.capacity} labs", BUSY_MESSAGE)


def _backend(session: Session, name: str) -> Backend:
    backend = session.scalar(select(Backend).where(Backend.name == name))
    if backend is None:
        raise LabDeskError(f"no backend named '{name}'")
    return backend


def _audit(session: Session, actor: str, action: str, backend: Backend, detail: str, address: str) -> None:
    """Record and commit together, so the audit row never exists without the change (or the reverse)."""
    audit.record(session, actor, action, target=f"backend:{backend.name}", detail=detail, address=address)
    session.commit()


def _shown(value: object) -> str:
    return "none" if value is None else str(value)
