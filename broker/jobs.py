"""rq entry points. Each takes primitive ids only and finds everything else through `broker.runtime`.

One job drives one lab through one in-progress state: it asks the backend once for the state's
operation, then observes; while the backend is still busy it returns rq's `Retry` (the worker's
scheduler runs it again later) instead of sleeping in a loop and holding a worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from rq import Retry, get_current_job
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from broker import backend_ops, endpoints, gpu_queue, gpus, runtime
from broker.clock import utcnow
from broker.connector import Connector, LabSpec, ObservedState
from broker.dispatch import JobRequest
from broker.errors import CapacityError, ConfigError, ConnectorError, TransientError, UnknownBackend
from broker.lifecycle import LabState, Move, transition
from broker.models import Lab

log = logging.getLogger(__name__)
S = LabState
POLL_FOREVER = 1_000_000  # the deadline sweep, not rq, bounds how long a lab may stay in progress
DATABASE_RETRY_CAP = 30  # seconds between runs of a job while the database does not answer


@dataclass(frozen=True)
class Step:
    """What driving a lab out of an in-progress state means: the backend call, and what ends it."""

    call: str
    want: ObservedState
    next: LabState


STEPS: dict[LabState, Step] = {
    S.PROVISIONING: Step("provision", ObservedState.READY, S.RUNNING),
    S.SUSPENDING: Step("suspend", ObservedState.SUSPENDED, S.SUSPENDED),
    S.RESUMING: Step("resume", ObservedState.READY, S.RUNNING),
    S.DELETING: Step("delete", ObservedState.GONE, S.DELETED),
}


_STOPPED = "The lab machine stopped unexpectedly. Reset the lab to start again."
# A lab whose retries are spent must not keep the retrying message ("… LabDesk keeps trying"): it says it stopped.
GAVE_UP = "The lab service did not answer, so LabDesk stopped trying. Reset the lab to try again; if it happens again, tell your instructor."
GAVE_UP_FULL = "No lab machine became free in time. Reset the lab to try again later."
_FAILED = {"provision": "The lab could not be created. Reset the lab to try again; if it fails again, tell your instructor."}

# A job enqueued for a requested lab goes on to drive its provisioning.
_DRIVES = {state: {state.value} for state in S} | {S.REQUESTED: {S.REQUESTED.value, S.PROVISIONING.value}}


def job_request(lab: Lab, queue: str) -> JobRequest:
    """The job that drives `lab` out of its current state; its id is unique to this very transition."""
    stamp = int(lab.state_changed_at.timestamp() * 1000)
    job_id = f"lab-{lab.id}-{lab.state}-{stamp}-{lab.recoveries}"
    return JobRequest(queue, job_id, advance_lab, (lab.id, lab.state, lab.recoveries))


def advance_lab(lab_id: int, state: str, recoveries: int = 0) -> Retry | None:
    """Drive lab `lab_id` out of `state`.

    A stale job does nothing: the lab has moved on, or the deadline sweep has since recovered it
    (`recoveries` changed) and handed it to a newer job.
    """
    try:
        return _advance_lab(lab_id, state, recoveries)
    except OperationalError as exc:
        return _after_database_fault(lab_id, exc)


def _after_database_fault(lab_id: int, exc: OperationalError) -> Retry:
    """The database went away mid-job (a restart cuts every connection): run the job again soon.

    Without this the lab waited for its state's deadline (up to 15 minutes) after a restart of a few
    seconds. Running again is what the deadline sweep would do, only sooner: the lab row is read afresh,
    and a backend call not yet recorded is made again, which the connector contract makes harmless.
    The deadline sweep still bounds an outage that lasts.
    """
    job = get_current_job()
    faults = int(job.meta.get("database_faults", 0)) + 1 if job else 1
    if job:
        job.meta["database_faults"] = faults
        job.save_meta()
    log.warning("lab %s: the database failed mid-job, running it again (attempt %s): %s", lab_id, faults, exc.orig)
    return Retry(max=POLL_FOREVER, interval=min(2**faults, DATABASE_RETRY_CAP))


def _advance_lab(lab_id: int, state: str, recoveries: int) -> Retry | None:
    rt = runtime.current()
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.state not in _DRIVES[S(state)] or lab.recoveries != recoveries:
            return None
        if lab.state == S.REQUESTED:
            try:
                backend_ops.admit_new_lab(session, lab)  # an admin's drain or capacity: wait as for a full backend
            except CapacityError as exc:
                lab.waiting_for = "capacity"
                return _back_off(session, lab, exc, minimum=30)
            if not gpu_queue.admit(rt, session, lab):
                return None  # queued for a GPU: whoever frees one enqueues this lab again
            lost = _capacity_lost_to_gpu_wait(session, lab)
            if lost is not None:
                return _back_off(session, lab, lost, minimum=30)
            if not transition(session, rt.settings, lab_id, S.REQUESTED, S.PROVISIONING, _move("worker picked it up"), waiting_for=None):
                return None
            session.refresh(lab)
        step = STEPS.get(S(lab.state))
        if step is None:
            return None
        try:
            outcome = _drive(session, lab, step, rt.connector(lab.backend))
        except TransientError as exc:
            return _back_off(session, lab, exc)
        except CapacityError as exc:
            lab.waiting_for = "capacity"  # the lab page then says no machine is free, rather than "failed"
            return _back_off(session, lab, exc, minimum=30)
        except ConnectorError as exc:
            _fail(session, lab, exc.user_message, str(exc))
            return None
        except (UnknownBackend, ConfigError) as exc:
            _fail(session, lab, "This lab's backend is misconfigured. Please tell your instructor.", str(exc))
            return None
        _clear_failures()
        return outcome


def _capacity_lost_to_gpu_wait(session: Session, lab: Lab) -> CapacityError | None:
    """The GPU queue commits, which ends the backend's capacity lock early: count again under a fresh lock,
    held until the move to `provisioning` commits. A lab that lost the place keeps its unit while it waits:
    units belong to this backend, whose other labs cannot start either while it is full."""
    if gpus.wanted_model(lab) is None:
        return None
    try:
        backend_ops.admit_new_lab(session, lab)
    except CapacityError as exc:
        lab.waiting_for = "capacity"
        return exc
    return None


def _drive(session: Session, lab: Lab, step: Step, connector: Connector) -> Retry | None:
    rt = runtime.current()
    if lab.backend_call != step.call:
        if step.call == "suspend":
            _check_before_suspend(lab.id)
        if step.call == "resume" and not _gpu_back(rt, session, lab, connector):
            return None  # queued for a GPU again
        _call_backend(session, lab, step, connector)
    if lab.handle is None:  # deleting a lab that never reached its backend
        return _finish(session, lab, step)
    seen = connector.observe(lab.handle)
    if seen.handle is not None and seen.handle != lab.handle:
        lab.handle = seen.handle  # the connector moved the lab (e.g. to another provider)
        session.commit()
    if seen.state == step.want:
        if step.call == "resume":
            connector.after_resume(lab.handle)
        return _finish(session, lab, step, connector)
    if seen.state in (ObservedState.ERROR, ObservedState.GONE):
        _fail(session, lab, _FAILED.get(step.call, _STOPPED), seen.message)
        return None
    lab.progress, lab.message = seen.progress, seen.message[:500]
    session.commit()
    return Retry(max=POLL_FOREVER, interval=rt.settings.poll_interval)


def _gpu_back(rt: runtime.Runtime, session: Session, lab: Lab, connector: Connector) -> bool:
    """A lab that let its GPU go when it was saved needs one again before it resumes (maybe another)."""
    if gpus.wanted_model(lab) is None or lab.handle is None or connector.keeps_gpu_when_suspended(lab.handle):
        return True
    if not gpu_queue.admit(rt, session, lab):
        return False
    unit = gpus.held_unit(session, lab.id)
    if unit is not None:
        lab.handle = connector.rebind_gpu(lab.handle, unit)
        session.commit()
    return True


def _check_before_suspend(lab_id: int) -> None:
    """Activities with `auto_check = "on_suspend"` get their checks run here, inline, before the backend
    is asked to suspend: the machines still run, and the idle sweep and a suspend request both come
    through this step. Best effort, like hooks: a check that cannot run never keeps a lab running."""
    from broker import attempts  # broker.attempts imports broker.services, which imports this module

    try:
        attempts.check_before_suspend(runtime.current(), lab_id)
    except Exception:  # noqa: BLE001 - logged; the suspend goes on
        log.exception("lab %s: the checks before suspending failed", lab_id)


def _call_backend(session: Session, lab: Lab, step: Step, connector: Connector) -> None:
    """Issue the state's backend operation once, remembering that it was issued."""
    if step.call == "provision":
        image = lab.activity.image
        spec = LabSpec(
            lab.id, image.slug, lab.user.subject, image.spec, course=f"course-{lab.activity.course_id}",
            protocol=image.protocol, gpu=gpus.held_unit(session, lab.id),
        )
        lab.handle = connector.provision(spec)
    elif lab.handle is not None:
        getattr(connector, step.call)(lab.handle)
    lab.backend_call = step.call
    session.commit()


def _finish(session: Session, lab: Lab, step: Step, connector: Connector | None = None) -> None:
    rt = runtime.current()
    fields: dict[str, object] = {"progress": 100, "message": "", "waiting_for": None}
    if step.next == S.RUNNING:
        now = utcnow()
        fields.update(last_active_at=now, idle_deadline=now + timedelta(seconds=lab.activity.idle_suspend_after))
    if step.next == S.RUNNING and connector is not None and lab.handle is not None:
        # Asked on every arrival in `running`: a backend may move a lab when it resumes it.
        fields.update(endpoints=endpoints.seal(rt.vault, connector.endpoints(lab.handle)))
    if step.next == S.DELETED:
        fields.update(endpoints=None)
    moved = transition(session, rt.settings, lab.id, S(lab.state), step.next, _move(f"backend reports {step.want.value}"), **fields)
    if moved and _lets_gpu_go(step, connector, lab):
        gpu_queue.let_go(rt, session, lab)
    return None


def _lets_gpu_go(step: Step, connector: Connector | None, lab: Lab) -> bool:
    """A deleted lab lets its GPU go; a suspended one too if its backend saved it to disk (policy)."""
    if step.next == S.DELETED:
        return True
    return step.next == S.SUSPENDED and connector is not None and lab.handle is not None and not connector.keeps_gpu_when_suspended(lab.handle)


def _back_off(session: Session, lab: Lab, exc: ConnectorError, minimum: int = 1) -> Retry | None:
    """Retry a passing fault later, doubling the wait; give up (lab failed) after too many in a row."""
    rt = runtime.current()
    job = get_current_job()
    failures = int(job.meta.get("transient_failures", 0)) + 1 if job else 1
    if job:
        job.meta["transient_failures"] = failures
        job.save_meta()
    log.warning("lab %s: %s (attempt %s)", lab.id, exc, failures)
    if failures > rt.settings.max_transient_retries:
        _fail(session, lab, GAVE_UP_FULL if isinstance(exc, CapacityError) else GAVE_UP, f"gave up after {failures} attempts: {exc}")
        return None
    lab.message = exc.user_message[:500]
    session.commit()
    return Retry(max=POLL_FOREVER, interval=max(minimum, min(2**failures, 300)))


def _clear_failures() -> None:
    """A call that worked ends a run of transient failures: the limit counts failures in a row."""
    job = get_current_job()
    if job and job.meta.get("transient_failures"):
        job.meta["transient_failures"] = 0
        job.save_meta()


def _fail(session: Session, lab: Lab, user_message: str, reason: str) -> None:
    rt = runtime.current()
    transition(session, rt.settings, lab.id, S(lab.state), S.FAILED, _move(reason), message=user_message[:500], endpoints=None)


def _move(reason: str) -> Move:
    job = get_current_job()
    return Move(reason=reason, actor="worker", job_id=job.id if job else None)


def nudge_request(lab_id: int, queue: str, stamp: int) -> JobRequest:
    """The job `labdesk watch` enqueues when a backend reports a change to a lab's object."""
    return JobRequest(queue, f"nudge-{lab_id}-{stamp}", nudge_lab, (lab_id,))


def nudge_lab(lab_id: int) -> None:
    """The backend says something happened to this lab: look now rather than at the next poll.

    A lab in progress is driven once, inline (its own polling job then finds it moved on); a running lab
    whose machine stopped or vanished under it fails at once, instead of at the reconciler's next pass.
    """
    rt = runtime.current()
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.handle is None:
            return
        state, recoveries = lab.state, lab.recoveries
        if S(state) in STEPS and lab.backend_call is not None:
            session.close()
            advance_lab(lab_id, state, recoveries)
            return
        if state != S.RUNNING:
            return
        seen = rt.connector(lab.backend).observe(lab.handle)
        if seen.state in (ObservedState.GONE, ObservedState.ERROR):
            _fail(session, lab, _STOPPED, f"backend event: {seen.message or seen.state.value}")
