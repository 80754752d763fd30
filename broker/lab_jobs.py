"""At most one job row per lab at a time, run by an rq job on the lab's backend queue.

Check attempts (`broker.attempts`) and take-away exports (`broker.takeaway`) both keep, per lab, at most
one row under way (a partial unique index enforces it) whose work is an rq job `<prefix>-<row id>` on the
lab's backend queue. What is hard about that is the same for both, so it is written once here:

- starting: a second request gets the row under way; two requests at the same moment meet at the unique
  index and the loser answers with the winner's row; the job is queued after the commit, and when Redis
  refuses the row is deleted again, so nothing is left half-way and the learner can simply press again;
- a row whose job died (worker killed, job failed, stopped or cancelled, or gone from Redis past the
  enqueue grace) must not block the lab's next one: it is noticed here and closed by its module.
- running: the job reads what it needs of the lab once (`LabSnapshot`) and works in the lab with no
  transaction open.

What a row holds, which states are "under way", how a dead one is closed and every message stay in each
module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol, TypeVar

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.dispatch import JobRequest
from broker.errors import ServiceUnavailable
from broker.models import Lab
from broker.runtime import Runtime

ENQUEUE_GRACE = timedelta(seconds=60)  # a row whose job is not in Redis yet may be mid-enqueue
_ENDED = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


class JobRow(Protocol):
    """A lab's job row: a mapped class with these columns (CheckAttempt, LabExport)."""

    id: Any
    job_id: Any
    created_at: Any


R = TypeVar("R", bound=JobRow)


@dataclass(frozen=True)
class LabSnapshot:
    """What a job needs of its lab, read once: no transaction stays open while the job works in the lab."""

    state: str
    handle: dict[str, Any] | None
    backend: Any
    spec: dict[str, Any]

    @classmethod
    def of(cls, lab: Lab) -> LabSnapshot:
        return cls(lab.state, lab.handle, lab.backend, lab.activity.image.spec or {})


def require_queue(rt: Runtime) -> None:
    """Raise ServiceUnavailable unless Redis answers (checked before anything is written)."""
    try:
        rt.redis.ping()
    except RedisError as exc:
        raise ServiceUnavailable(f"the job queue is unavailable: {exc}") from exc


def insert_once(
    session: Session, new_row: Callable[[], R], under_way: Callable[[], int | None], job_prefix: str
) -> tuple[int, bool]:
    """Add the lab's new row unless one is under way: (the row under way's id, False), or (the new row's id,
    True) once it is committed with its job id `<job_prefix>-<id>` (then queue it with `enqueue_or_delete`).

    `under_way` answers the lab's row under way (closing a dead one first); it is asked again when another
    request inserted one at the same moment (the unique index); if there is still none the IntegrityError
    is raised.
    """
    existing = under_way()
    if existing is not None:
        return existing, False
    row = new_row()
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # another click started one at the same moment
        session.rollback()
        existing = under_way()
        if existing is None:
            raise
        return existing, False
    row.job_id = f"{job_prefix}-{row.id}"
    session.commit()
    return row.id, True


def enqueue_or_delete(
    rt: Runtime, model: type[Any], row_id: int, queue: str, job_prefix: str, run: Callable[[int], str], at_front: bool = False
) -> None:
    """Queue `run(row_id)` as job `<job_prefix>-<row_id>` on `queue` (before its backlog if `at_front`);
    when Redis refuses, delete the row (of `model`'s table) and raise ServiceUnavailable."""
    try:
        rt.dispatcher.enqueue(JobRequest(queue, f"{job_prefix}-{row_id}", run, (row_id,), at_front=at_front))
    except RedisError as exc:
        with rt.session() as session:  # nothing half-way: the learner can simply press again
            session.execute(model.__table__.delete().where(model.id == row_id))
            session.commit()
        raise ServiceUnavailable(f"the job queue is unavailable: {exc}") from exc


def under_way(rt: Runtime, row: R | None, close_dead: Callable[[R], None], stale_after: timedelta | None = None) -> int | None:
    """The id of the lab's `row` under way, or None when there is none or its job died (then `close_dead`
    closes it first). `stale_after` as for `job_died`."""
    if row is None:
        return None
    if not job_died(rt, row.job_id, row.created_at, stale_after):
        return row.id  # type: ignore[no-any-return]
    close_dead(row)
    return None


def job_died(rt: Runtime, job_id: str | None, created_at: datetime, stale_after: timedelta | None = None) -> bool:
    """Whether the rq job `job_id` of a row under way since `created_at` ended without finishing it (a killed
    worker, a timeout): failed, stopped or cancelled, or not in Redis once past ENQUEUE_GRACE. When Redis
    cannot be asked, it did not die.

    Without `stale_after`, a row without a job id is never judged dead (its work runs inline, outside rq).
    With it, no job lives that long: a row older than `stale_after`, or one without a job id, is dead once
    past ENQUEUE_GRACE, whatever Redis says.
    """
    age = utcnow() - created_at
    if stale_after is not None and (job_id is None or age > stale_after):
        return age > ENQUEUE_GRACE
    if job_id is None:
        return False
    try:
        job = Job.fetch(job_id, connection=rt.redis)
    except NoSuchJobError:
        return age > ENQUEUE_GRACE
    except RedisError:
        return False
    return job.get_status(refresh=False) in _ENDED
