"""Putting jobs on queues. Production uses rq on Redis; the cost simulation swaps in its own dispatcher.

Job ids are derived from what the job is for (lab, state, moment of the transition), so enqueueing
the same work twice, from a double click or a re-run sweep, leaves one job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Protocol

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.exceptions import DuplicateJobError

DEFAULT_QUEUE = "labdesk-default"
JOB_TIMEOUT = 600
FAILURE_TTL = 7 * 24 * 3600
LIVE_STATUSES = frozenset({"queued", "started", "scheduled", "deferred"})  # rq's JobStatus values of a job not yet done


@dataclass(frozen=True)
class JobRequest:
    """One job to enqueue: where, under which id, and what to call with which primitive arguments.

    `func` may be a dotted path ("lti.outbox.deliver"): the broker can then enqueue work of packages it
    must not import. `delay` (seconds, single enqueues only) holds the job back, e.g. for a back-off.
    `at_front` puts the job before the queue's backlog: for work a learner watches a page wait for (a
    "Check my work", seconds of work) that would otherwise queue behind a class's launch wave.
    """

    queue: str
    job_id: str
    func: Callable[..., Any] | str
    args: tuple[Any, ...] = ()
    delay: int = 0
    at_front: bool = False


class Dispatcher(Protocol):
    def enqueue(self, request: JobRequest) -> bool:
        """Enqueue unless a job with that id already exists; True if this call enqueued it."""

    def enqueue_many(self, requests: list[JobRequest]) -> None:
        """Enqueue many jobs at once; as `enqueue`, an id that already exists is left as it is."""


class RQDispatcher:
    """Enqueues on rq queues. Finished jobs keep no result, so an id is free again once its job is done."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def enqueue(self, request: JobRequest) -> bool:
        try:
            if request.delay > 0:
                self._enqueue_later(request)
            else:
                self._queue(request.queue).enqueue_call(
                    request.func, args=request.args, **self._options(request), at_front=request.at_front, unique=True
                )
        except DuplicateJobError:
            return False
        return True

    def _enqueue_later(self, request: JobRequest) -> None:
        """Park the job in rq's scheduled registry; a worker's scheduler queues it once the delay is over."""
        options = self._options(request)
        options["job_timeout"] = options.pop("timeout")  # enqueue_in's name for it
        self._queue(request.queue).enqueue_in(
            timedelta(seconds=request.delay), request.func, args=request.args, **options, unique=True
        )

    def enqueue_many(self, requests: list[JobRequest]) -> None:
        """Enqueue many jobs in two round trips. An id whose job is waiting or running is left alone: rq
        would overwrite it and put it in the queue a second time, and both copies would run. An id whose
        job failed or was stopped is enqueued again, as before (the score outbox's sweep relies on it)."""
        unique = list({request.job_id: request for request in requests}.values())
        with self.redis.pipeline(transaction=False) as pipe:
            for request in unique:
                pipe.hget(Job.key_for(request.job_id), "status")
            statuses = pipe.execute()
        by_queue: dict[str, list[JobRequest]] = {}
        for request, status in zip(unique, statuses):
            if status is None or status.decode() not in LIVE_STATUSES:
                by_queue.setdefault(request.queue, []).append(request)
        with self.redis.pipeline() as pipe:
            for name, batch in by_queue.items():
                data = [Queue.prepare_data(r.func, args=r.args, **self._options(r), at_front=r.at_front) for r in batch]
                self._queue(name).enqueue_many(data, pipeline=pipe)
            pipe.execute()

    def _queue(self, name: str) -> Queue:
        return Queue(name, connection=self.redis)

    @staticmethod
    def _options(request: JobRequest) -> dict[str, Any]:
        return dict(job_id=request.job_id, result_ttl=0, failure_ttl=FAILURE_TTL, timeout=JOB_TIMEOUT)
