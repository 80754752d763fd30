"""What went wrong, for the admin console: rq jobs that failed (with a retry), and labs in state `failed`.

A job lands in rq's failed registry only when it raised something LabDesk did not expect: connector
errors are handled inside the jobs (retried, or the lab fails with a message), so an entry here is a bug,
an outage or a misconfiguration worth a look. rq keeps them for `broker.dispatch.FAILURE_TTL` (7 days).
Each LabDesk queue (the default one and one per backend) has its own registry; all are read.

A retry requeues the very job (same id, same arguments) through rq. That is safe because every LabDesk
job re-reads the database first: a lab job whose lab has moved on does nothing.

Failed jobs live in Redis and failed labs in the database, so each list is read on its own: with Redis
unreachable, `failed_jobs` and `retry` raise `JobsUnavailable` (a sentence for the admin, no traceback)
while the failed labs still show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import audit
from broker.dispatch import DEFAULT_QUEUE
from broker.errors import LabDeskError, ServiceUnavailable
from broker.models import Activity, Backend, CheckAttempt, Course, Lab, LabEvent, LabExport, User
from broker.runtime import Runtime

# Job ids that name their lab: `lab-<id>-<state>-…` (broker.jobs.job_request) and `nudge-<id>-…`.
_LAB_JOB_ID = re.compile(r"^(?:lab|nudge)-(\d+)-")


class JobNotFound(LabDeskError):
    """No failed job with that id in any LabDesk queue (retried already, or expired)."""


class JobsUnavailable(ServiceUnavailable):
    """Redis, where rq keeps the jobs, cannot be reached: no job can be listed or retried now."""

    def __init__(self, cause: RedisError) -> None:
        super().__init__(f"Redis cannot be reached ({cause})")


@dataclass(frozen=True)
class FailedJob:
    job_id: str
    queue: str
    function: str
    args: tuple[object, ...]
    lab_id: int | None  # the lab it concerns, when it is a lab's job
    enqueued_at: datetime | None
    ended_at: datetime | None
    reason: str  # the exception's last line, e.g. "RuntimeError: disk full"


@dataclass(frozen=True)
class FailedLab:
    lab_id: int
    learner: str
    course: str
    activity: str
    backend: str
    failed_at: datetime
    reason: str  # what the event recorded (for admins)
    message: str  # what the learner was shown


def queue_names(session: Session) -> list[str]:
    """Every queue LabDesk enqueues on: the default one and each backend's."""
    return [DEFAULT_QUEUE] + [b.queue_name for b in session.scalars(select(Backend).order_by(Backend.id))]


def failed_jobs(rt: Runtime, limit: int = 200) -> list[FailedJob]:
    """Failed jobs across every LabDesk queue, the most recently ended first; JobsUnavailable when Redis
    cannot be reached."""
    with rt.session() as session:
        names = queue_names(session)
        try:
            found = [job for name in names for job in _failed_in(rt, name)]
        except RedisError as exc:
            raise JobsUnavailable(exc) from exc
        found = _with_labs(session, found)
    found.sort(key=lambda j: j.ended_at or datetime.min, reverse=True)
    return found[:limit]


def retry(rt: Runtime, job_id: str, actor: str, address: str = "") -> FailedJob:
    """Put a failed job back on its queue (rq's requeue: same id and arguments), and audit it.
    Raises JobNotFound, or JobsUnavailable when Redis cannot be reached (nothing is retried or audited)."""
    wanted = next((job for job in failed_jobs(rt, limit=10**9) if job.job_id == job_id), None)
    if wanted is None:
        raise JobNotFound(f"no failed job '{job_id}' (retried already, or expired)")
    try:
        FailedJobRegistry(wanted.queue, connection=rt.redis).requeue(job_id)
    except (InvalidJobOperation, NoSuchJobError) as exc:  # someone else retried it a moment ago
        raise JobNotFound(f"no failed job '{job_id}' (retried already, or expired)") from exc
    except RedisError as exc:
        raise JobsUnavailable(exc) from exc
    with rt.session() as session:
        lab_id = wanted.lab_id if wanted.lab_id is not None and session.get(Lab, wanted.lab_id) else None
        audit.record(session, actor, "job.retry", lab_id=lab_id, target=f"job:{job_id}",
                     detail=f"{wanted.function} on {wanted.queue}; it had failed with {wanted.reason}", address=address)
        session.commit()
    return wanted


def failed_labs(session: Session, limit: int = 200) -> list[FailedLab]:
    """Labs in state `failed`, the most recent first, with the reason their failing event recorded."""
    last_failure = (
        select(LabEvent.lab_id, func.max(LabEvent.id).label("event_id"))
        .where(LabEvent.to_state == "failed")
        .group_by(LabEvent.lab_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Lab.id, Lab.state_changed_at, Lab.message, LabEvent.reason,
            func.coalesce(func.nullif(User.name, ""), User.subject), Course.title, Activity.title, Backend.name,
        )
        .join(User, Lab.user_id == User.id)
        .join(Activity, Lab.activity_id == Activity.id)
        .join(Course, Activity.course_id == Course.id)
        .join(Backend, Lab.backend_id == Backend.id)
        .outerjoin(last_failure, last_failure.c.lab_id == Lab.id)
        .outerjoin(LabEvent, LabEvent.id == last_failure.c.event_id)
        .where(Lab.state == "failed")
        .order_by(Lab.state_changed_at.desc(), Lab.id.desc())
        .limit(limit)
    ).all()
    return [
        FailedLab(lab_id, learner, course, activity, backend, at, reason or "", message)
        for lab_id, at, message, reason, learner, course, activity, backend in rows
    ]


def _failed_in(rt: Runtime, queue: str) -> list[FailedJob]:
    ids = FailedJobRegistry(queue, connection=rt.redis).get_job_ids()
    return [_failed_job(queue, job) for job in Job.fetch_many(ids, connection=rt.redis) if job is not None]


def _failed_job(queue: str, job: Job) -> FailedJob:
    result = job.latest_result()
    trace = (result.exc_string if result is not None else None) or ""
    match = _LAB_JOB_ID.match(job.id)
    return FailedJob(
        job_id=job.id, queue=queue, function=job.func_name or "", args=tuple(job.args or ()),
        lab_id=int(match.group(1)) if match else None, enqueued_at=_naive(job.enqueued_at), ended_at=_naive(job.ended_at),
        reason=last_line(trace),
    )


def _naive(moment: datetime | None) -> datetime | None:
    """rq's times are aware UTC; LabDesk's are naive UTC throughout (docs/architecture.md)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def last_line(trace: str) -> str:
    """The line of a traceback that says what was raised ("RuntimeError: disk full")."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no reason recorded"


def _with_labs(session: Session, found: list[FailedJob]) -> list[FailedJob]:
    """Jobs run for a lab's row rather than the lab itself (check attempts, take-away exports) name no
    lab in their id; their row does."""
    ids = [job.job_id for job in found if job.lab_id is None]
    if not ids:
        return found
    owners = dict(session.execute(select(CheckAttempt.job_id, CheckAttempt.lab_id).where(CheckAttempt.job_id.in_(ids))).all())
    owners |= dict(session.execute(select(LabExport.job_id, LabExport.lab_id).where(LabExport.job_id.in_(ids))).all())
    return [job if job.lab_id is not None else replace(job, lab_id=owners.get(job.job_id)) for job in found]
