"""Enqueueing: the same work enqueued twice leaves one job, whether one at a time or in a batch.

Why: job ids name the work (a lab's transition, a score row's attempt), and rq overwrites a job whose id is
already queued instead of refusing it. Two copies of one id in a queue run twice at once; the first to
finish deletes the job (no result is kept), and the second then fails inside rq ("Failed to retrieve status
for job"), which lands in the admin's failed jobs. The score outbox's sweep did exactly that under load
(bench/soak.py): it enqueued a fresh row's job while the job recorded with the score was still waiting.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

from broker.dispatch import DEFAULT_QUEUE, JobRequest, RQDispatcher


def request(job_id: str) -> JobRequest:
    return JobRequest(DEFAULT_QUEUE, job_id, "lti.outbox.deliver", (int(job_id.split("-")[1]),))


def test_a_batch_leaves_a_job_already_waiting_as_it_is_and_enqueues_the_rest(redis_client: Redis) -> None:
    dispatcher = RQDispatcher(redis_client)
    assert dispatcher.enqueue(request("score-1-0"))

    dispatcher.enqueue_many([request("score-1-0"), request("score-2-0"), request("score-2-0")])

    assert Queue(DEFAULT_QUEUE, connection=redis_client).job_ids == ["score-1-0", "score-2-0"]


def test_a_single_enqueue_of_a_waiting_job_is_refused(redis_client: Redis) -> None:
    dispatcher = RQDispatcher(redis_client)
    assert dispatcher.enqueue(request("score-3-0"))
    assert not dispatcher.enqueue(request("score-3-0"))
    assert Queue(DEFAULT_QUEUE, connection=redis_client).job_ids == ["score-3-0"]


def test_a_batch_enqueues_again_a_job_that_failed(redis_client: Redis) -> None:
    """The outbox sweep re-enqueues a row whose job died: a failed job of that id must not block it."""
    dispatcher = RQDispatcher(redis_client)
    dispatcher.enqueue(request("score-4-0"))
    queue = Queue(DEFAULT_QUEUE, connection=redis_client)
    job = queue.fetch_job("score-4-0")
    assert job is not None
    queue.remove(job)
    job.set_status("failed")

    dispatcher.enqueue_many([request("score-4-0")])

    assert queue.job_ids == ["score-4-0"]
