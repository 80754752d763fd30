"""Periodic sweeps: suspend idle labs, recover or fail stuck ones, reap old ones, reconcile backends, and
start the deadline checks of graded activities.

Each sweep is a plain function of the runtime (the CLI calls it directly) and an rq job of no
arguments (the cron scheduler enqueues it). Sweeps work in bulk: one query finds every lab to act on,
one compare-and-set UPDATE moves them, and one Redis pipeline enqueues their jobs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from importlib.metadata import entry_points
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import activity, attempts, class_schedule, gpu_queue, runtime, usage_limits
from rq.cron import CronScheduler

from broker.clock import utcnow
from broker.config import Settings
from broker.dispatch import DEFAULT_QUEUE, JobRequest
from broker.connector import Capability, Connector, ManagedObject, ObservedState
from broker.errors import ConfigError
from broker.jobs import job_request
from broker.lifecycle import IN_PROGRESS, LabState, Move, deadline_for, transition, transition_many
from broker.models import Activity, Backend, Lab, LabEvent
from broker.registry import connector_class
from broker.runtime import Runtime

S = LabState
log = logging.getLogger(__name__)
DURATIONS_KEY = "labdesk:sweep_seconds"
ORPHANS_KEY = "labdesk:orphans:{backend}"


def suspend_idle(rt: Runtime) -> int:
    """Suspend every running lab whose learner has been away longer than its activity allows. Labs
    pre-warmed for a class session are the class schedule's (`broker.class_schedule.release_unused`) until
    their learner arrives: their learner has not been away, they have not come yet."""
    with rt.session() as session:
        activity.flush(rt.redis, session, rt.settings.leave_grace)
        if activity.presence_settling(rt.redis, session):
            return 0  # Redis has just (re)started: the learners' pages have not all said they are there yet
        ids = session.scalars(
            select(Lab.id)
            .where(Lab.state == S.RUNNING.value, Lab.idle_deadline < utcnow(), Lab.prewarmed_by.is_(None),
                   Lab.backend_id.in_(_suspendable(session)))
            .limit(rt.settings.sweep_batch)
        ).all()
        moved = transition_many(session, rt.settings, list(ids), S.RUNNING, S.SUSPENDING, Move("learner idle", "sweep"))
        return _enqueue_all(rt, session, moved)


def expire_stuck(rt: Runtime) -> int:
    """Labs past their deadline: run their job again (a worker may have died), or fail them for good."""
    requeue_lost(rt)
    with rt.session() as session:
        overdue = session.scalars(
            select(Lab).where(Lab.state.in_([s.value for s in IN_PROGRESS]), Lab.deadline < utcnow())
        ).all()
        retried: list[int] = []
        failed = 0
        for lab in overdue:
            if lab.recoveries < rt.settings.max_recoveries:
                if _recover(rt, session, lab):
                    retried.append(lab.id)
                continue
            message = f"The lab took too long while {lab.state}. Reset the lab to try again."
            move = Move(f"deadline passed while {lab.state}", "sweep")
            failed += transition(session, rt.settings, lab.id, S(lab.state), S.FAILED, move, message=message)
        return _enqueue_all(rt, session, retried) + failed


def requeue_lost(rt: Runtime) -> int:
    """Right after Redis (re)starts, put back the job of every lab in progress (docs/faults.md).

    A Redis that keeps nothing on disk comes back empty: queued jobs and the polls rq had scheduled are
    gone, and their labs would wait for their deadline (10 or 15 minutes) with nothing happening. The ids
    are the ones the lost jobs had, and a batch enqueue leaves alone an id whose job still waits or runs,
    so this adds nothing when nothing was lost, and spends none of the labs' recoveries.
    """
    if int(rt.redis.info("server")["uptime_in_seconds"]) >= 4 * rt.settings.sweep_interval:
        return 0
    with rt.session() as session:
        ids = session.scalars(select(Lab.id).where(Lab.state.in_([s.value for s in IN_PROGRESS]))).all()
        return _enqueue_all(rt, session, list(ids))


def _recover(rt: Runtime, session: Session, lab: Lab) -> bool:
    """Give an overdue lab a fresh deadline and a fresh job id (compare-and-set on state and recoveries).

    `backend_call` stays: a call the dead job recorded reached the backend, so the new job only observes
    (a second `suspend` of a suspending machine is an error on some clouds). A call the job died inside
    was never recorded, and the new job issues it (provision is find-or-create by lab id)."""
    now = utcnow()
    result = session.execute(
        update(Lab)
        .where(Lab.id == lab.id, Lab.state == lab.state, Lab.recoveries == lab.recoveries)
        .values(
            recoveries=Lab.recoveries + 1,
            deadline=deadline_for(S(lab.state), rt.settings, now),
            state_changed_at=now,
        )
    )
    if result.rowcount != 1:
        return False
    session.add(LabEvent(lab_id=lab.id, from_state=lab.state, to_state=lab.state, reason="deadline passed; retrying", actor="sweep", at=now))
    session.commit()
    return True


def reap(rt: Runtime) -> int:
    """Delete labs unused for their activity's `reap_after_days`, and failed labs after a day."""
    now = utcnow()
    with rt.session() as session:
        ids: list[int] = []
        for days in session.scalars(select(Activity.reap_after_days).distinct()).all():
            ids += session.scalars(
                select(Lab.id)
                .join(Activity, Lab.activity_id == Activity.id)
                .where(
                    Activity.reap_after_days == days,
                    Lab.state.in_([S.RUNNING.value, S.SUSPENDED.value]),
                    Lab.last_active_at < now - timedelta(days=days),
                )
            ).all()
        ids += session.scalars(
            select(Lab.id).where(Lab.state == S.FAILED.value, Lab.state_changed_at < now - timedelta(days=1))
        ).all()
        sources = (S.RUNNING, S.SUSPENDED, S.FAILED)
        moved = transition_many(session, rt.settings, ids, sources, S.DELETING, Move("unused too long", "reaper"))
        return _enqueue_all(rt, session, moved)


def reconcile(rt: Runtime) -> int:
    """Enqueue one reconciliation per enabled backend, on that backend's own queue."""
    with rt.session() as session:
        backends = session.scalars(select(Backend).where(Backend.enabled.is_(True))).all()
        for backend in backends:
            stamp = int(time.time()) // max(rt.settings.reconcile_interval, 1)
            rt.dispatcher.enqueue(JobRequest(backend.queue_name, f"reconcile-{backend.id}-{stamp}", reconcile_backend_job, (backend.id,)))
        return len(backends)


def reconcile_backend(rt: Runtime, backend_id: int) -> dict[str, int]:
    """Compare a backend's objects with the database both ways.

    Objects no lab claims are deleted once they have been seen unclaimed for `orphan_grace` seconds;
    labs whose object has vanished are failed with a message, so the learner's next launch starts afresh.
    """
    with rt.session() as session:
        backend = session.get(Backend, backend_id)
        if backend is None:
            return {"orphans_deleted": 0, "vanished": 0}
        connector = rt.connector(backend)
        claimed = _claimed(session, backend_id)
        managed = connector.list_managed()
        deleted = _delete_orphans(rt, backend, [m for m in managed if m.lab_id not in claimed], connector)
        vanished = _fail_vanished(rt, session, backend_id, {m.lab_id for m in managed}, connector)
        return {"orphans_deleted": deleted, "vanished": vanished}


def _claimed(session: Session, backend_id: int) -> set[int]:
    """Labs that own their backend object: any live one that has a handle, or is still being created.

    A failed lab claims nothing: its object is a leftover that would otherwise keep costing money until
    the reaper or a relaunch gets to it (both treat an object already gone as deleted).
    """
    ended = (S.DELETED.value, S.FAILED.value)
    rows = session.execute(
        select(Lab.id, Lab.state, Lab.handle).where(Lab.backend_id == backend_id, Lab.state.not_in(ended))
    ).all()
    creating = (S.REQUESTED.value, S.PROVISIONING.value)
    return {lab_id for lab_id, state, handle in rows if handle is not None or state in creating}


def _delete_orphans(rt: Runtime, backend: Backend, orphans: list[ManagedObject], connector: Connector) -> int:
    """Delete orphans seen unclaimed for `orphan_grace`; remember when the others were first seen.

    Two passes may run at once (two schedulers, or a backlog: tests/test_scale_out.py). Only the pass that
    takes an orphan's note out of Redis deletes it, so each object gets one delete call. An orphan is
    always noted by an earlier pass first (`orphan_grace` is at least 1 s).
    """
    key = ORPHANS_KEY.format(backend=backend.id)
    now = utcnow().replace(tzinfo=UTC).timestamp()  # the broker's clock, so a simulation can age orphans
    first_seen = {int(k): float(v) for k, v in rt.redis.hgetall(key).items()}
    keep: dict[str, float] = {}
    deleted = 0
    for orphan in orphans:
        seen = first_seen.get(orphan.lab_id, now)
        if now - seen >= rt.settings.orphan_grace:
            if rt.redis.hdel(key, str(orphan.lab_id)):
                connector.delete(orphan.handle)
                deleted += 1
        else:
            keep[str(orphan.lab_id)] = seen
    with rt.redis.pipeline() as pipe:
        pipe.delete(key)
        if keep:
            pipe.hset(key, mapping=keep)
        pipe.execute()
    return deleted


def _fail_vanished(rt: Runtime, session: Session, backend_id: int, present: set[int], connector: Connector) -> int:
    """Fail running or suspended labs whose object is missing from the backend (confirmed by observe)."""
    stable = (S.RUNNING.value, S.SUSPENDED.value)
    candidates = session.execute(
        select(Lab.id, Lab.state, Lab.handle).where(Lab.backend_id == backend_id, Lab.state.in_(stable))
    ).all()
    failed = 0
    for lab_id, state, handle in candidates:
        if lab_id in present or handle is None or connector.observe(handle).state != ObservedState.GONE:
            continue
        message = "This lab's machine no longer exists. Launch again to get a fresh lab."
        if transition(session, rt.settings, lab_id, S(state), S.FAILED, Move("backend object vanished", "reconciler"), message=message):
            failed += 1
    return failed


def _suspendable(session: Session) -> list[int]:
    """Backends whose connector can suspend; labs elsewhere are left running (and reaped later)."""
    backends = session.execute(select(Backend.id, Backend.kind)).all()
    return [bid for bid, kind in backends if Capability.SUSPEND in connector_class(kind).capabilities]


def _enqueue_all(rt: Runtime, session: Session, lab_ids: list[int]) -> int:
    if not lab_ids:
        return 0
    labs = session.scalars(select(Lab).where(Lab.id.in_(lab_ids)).execution_options(populate_existing=True)).all()
    queues = {b.id: b.queue_name for b in session.scalars(select(Backend)).all()}
    rt.dispatcher.enqueue_many([job_request(lab, queues[lab.backend_id]) for lab in labs])
    return len(lab_ids)


def register_cron(scheduler: CronScheduler, settings: Settings) -> None:
    """Put every sweep on rq's cron scheduler at its configured interval."""
    every = {
        suspend_idle_job: settings.sweep_interval,
        expire_stuck_job: settings.sweep_interval,
        reap_job: settings.reap_interval,
        reconcile_job: settings.reconcile_interval,
        check_backends_job: settings.health_interval,
        check_due_job: settings.grading_due_interval,
        gpu_sweep_job: settings.gpu_interval,
        usage_limits_job: settings.usage_limit_interval,
        prewarm_job: settings.class_session_interval,
        release_prewarmed_job: settings.sweep_interval,
    }
    for job, seconds in every.items():
        scheduler.register(job, DEFAULT_QUEUE, interval=seconds, result_ttl=0, name=job.__name__)
    for name, periodic in periodic_jobs().items():
        seconds = getattr(settings, periodic.interval_setting, None)
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise ConfigError(f"periodic job '{name}': '{periodic.interval_setting}' is not a whole-number setting")
        scheduler.register(periodic.job, periodic.queue, interval=seconds, result_ttl=0, name=name)


PERIODIC_GROUP = "labdesk.periodic"


@dataclass(frozen=True)
class Periodic:
    """A sweep that another package (LTI's grade outbox) puts on the cron through the `labdesk.periodic`
    entry points, so the broker schedules it without importing that package."""

    job: Callable[[], Any]
    interval_setting: str  # the Settings field that holds its interval in seconds
    queue: str = DEFAULT_QUEUE


def periodic_jobs() -> dict[str, Periodic]:
    """Every installed periodic job, by entry-point name."""
    found: dict[str, Periodic] = {}
    for point in entry_points(group=PERIODIC_GROUP):
        periodic = point.load()
        if not isinstance(periodic, Periodic):
            raise ConfigError(f"entry point {PERIODIC_GROUP}:{point.name} is not a broker.schedule.Periodic")
        found[point.name] = periodic
    return found


# -- rq entry points (no arguments; the cron scheduler enqueues them) ----------------------------------
def timed(name: str, sweep: Callable[[Runtime], int]) -> int:
    """Run a sweep and keep its duration in Redis for /metrics."""
    rt = runtime.current()
    started = time.perf_counter()
    count = sweep(rt)
    rt.redis.hset(DURATIONS_KEY, name, time.perf_counter() - started)
    return count


def suspend_idle_job() -> int:
    return timed("suspend", suspend_idle)


def expire_stuck_job() -> int:
    return timed("expire", expire_stuck)


def reap_job() -> int:
    return timed("reap", reap)


def reconcile_job() -> int:
    return timed("reconcile", reconcile)


def check_due_job() -> int:
    """Deadline checks of activities with `auto_check = "at_deadline"` (broker.attempts.check_due)."""
    return timed("grading_due", attempts.check_due)


def gpu_sweep_job() -> int:
    """Free GPUs that ended labs hold and start whoever is next (broker.gpu_queue.sweep)."""
    return timed("gpu", gpu_queue.sweep)


def usage_limits_job() -> int:
    """Suspend running labs whose learner used their week's hours (broker.usage_limits.sweep)."""
    return timed("usage_limits", usage_limits.sweep)


def prewarm_job() -> int:
    """Start the labs of class sessions whose warm-up time has come (broker.class_schedule.prewarm_due)."""
    return timed("prewarm", class_schedule.prewarm_due)


def release_prewarmed_job() -> int:
    """Hold pre-warmed labs until class, then suspend those nobody used (broker.class_schedule.release_unused)."""
    return timed("prewarm_release", class_schedule.release_unused)


def reconcile_backend_job(backend_id: int) -> dict[str, int]:
    return reconcile_backend(runtime.current(), backend_id)


HEALTH_KEY = "labdesk:backend_health"


def check_backends(rt: Runtime) -> int:
    """Enqueue an availability check per backend on its own queue (the web never calls a backend)."""
    with rt.session() as session:
        backends = session.scalars(select(Backend).where(Backend.enabled.is_(True))).all()
        stamp = int(time.time()) // max(rt.settings.health_interval, 1)
        for backend in backends:
            rt.dispatcher.enqueue(JobRequest(backend.queue_name, f"health-{backend.id}-{stamp}", check_backend_job, (backend.id,)))
        return len(backends)


def check_backend(rt: Runtime, backend_id: int) -> bool:
    """Ask one backend whether it answers, and keep the answer (with its time) for /healthz."""
    with rt.session() as session:
        backend = session.get(Backend, backend_id)
        if backend is None:
            return False
        try:
            connector = rt.connector(backend)
            ok = bool(connector.available())
            if ok and Capability.GPU in connector.capabilities:
                gpu_queue.refresh(rt, session, backend)  # GPUs come and go with hosts and admins
        except Exception:  # noqa: BLE001 - any failure to answer means "not available"
            log.warning("backend %s is not available", backend.name, exc_info=True)
            ok = False
    rt.redis.hset(HEALTH_KEY, backend.name, json.dumps({"ok": ok, "at": time.time()}))
    return ok


def check_backends_job() -> int:
    return timed("health", check_backends)


def check_backend_job(backend_id: int) -> bool:
    return check_backend(runtime.current(), backend_id)
