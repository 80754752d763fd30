"""rq workers that stop promptly and ride out a Redis restart.

rq 2.x listens for commands (stop, kill the work-horse) on a pub/sub channel, in a thread that waits up to
60 s for a message. At teardown rq unsubscribes and then stops that thread; redis-py 8.2 made `stop()`
wait for the thread to end. When the unsubscribe confirmation reaches the thread before its stop flag is
set, the thread goes back to waiting, and the worker's exit hangs for a whole minute (seen in about 2% of
in-process runs on a busy machine: 6 of 300, each 60.0 s). Tripping the flag first, then unsubscribing,
makes that confirmation the thread's last message.

They also ride out a Redis restart (docs/faults.md). rq waits for Redis only while idle (its dequeue loop
retries); any other command that fails after redis-py's own retries (10, jittered, capped at 1 s: about
1 to 5 s in all) ends the worker: "found an unhandled exception, quitting". That happens when a job
ends, or its work-horse reports, while Redis is still down. And a Redis that comes back empty has
forgotten the worker, so rq's own registry, `labdesk doctor` and the container health check no longer see
it, though it works.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from rq import SimpleWorker, Worker, worker_registration

# Every Redis command of a worker (its loop, work-horses, rq's scheduler process, the command listener)
# waits up to about two minutes for Redis to answer again, trying every 2 s at most: longer than a restart,
# short enough that a Redis really gone still ends the process for systemd or Kubernetes to see. Timeouts
# are not retried: a Redis that hangs is not one that restarts.
OUTAGE_RETRY = Retry(ExponentialBackoff(cap=2, base=0.25), retries=60, supported_errors=(RedisConnectionError,))


class PromptStop:
    """Mixin for rq workers: the command listener ends as soon as the worker does."""

    pubsub_thread: object | None
    pubsub: object | None

    def unsubscribe(self) -> None:
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        thread.stop(timeout=0)  # type: ignore[attr-defined]  # sets the flag, waits for nothing
        pubsub.unsubscribe()  # type: ignore[attr-defined]  # its confirmation wakes the thread, which sees the flag
        thread.join(timeout=5)  # type: ignore[attr-defined]  # the thread closes the pub/sub connection itself


class RidesOutRedis:
    """Mixin for rq workers: Redis commands wait out a restart, and the worker registers again when Redis
    has come back empty."""

    connection: Redis
    key: str
    worker_ttl: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection.set_retry(OUTAGE_RETRY)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        if pipeline is None and not self.connection.hexists(self.key, "birth"):
            self._register_again()

    def _register_again(self) -> None:
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=self.serialize())  # type: ignore[attr-defined]
            worker_registration.register(self, pipe)  # type: ignore[arg-type]
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()


class LabDeskWorker(PromptStop, RidesOutRedis, Worker):
    """`labdesk worker`: forks a work-horse per job."""


class InlineWorker(PromptStop, SimpleWorker):
    """Runs jobs in this process (tests, `--burst` helpers)."""
