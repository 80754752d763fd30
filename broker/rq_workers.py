"""rq workers that stop promptly.

rq 2.x listens for commands (stop, kill the work-horse) on a pub/sub channel, in a thread that waits up to
60 s for a message. At teardown rq unsubscribes and then stops that thread; redis-py 8.2 made `stop()`
wait for the thread to end. When the unsubscribe confirmation reaches the thread before its stop flag is
set, the thread goes back to waiting, and the worker's exit hangs for a whole minute (seen in about 2% of
in-process runs on a busy machine: 6 of 300, each 60.0 s). Tripping the flag first, then unsubscribing,
makes that confirmation the thread's last message.
"""

from __future__ import annotations

from rq import SimpleWorker, Worker


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


class LabDeskWorker(PromptStop, Worker):
    """`labdesk worker`: forks a work-horse per job."""


class InlineWorker(PromptStop, SimpleWorker):
    """Runs jobs in this process (tests, `--burst` helpers)."""
