"""Running what the queues hold in this process, and a clock the tests can move forward.

Web tests that need a lab to reach `running` take the jobs off the real rq queues with an in-process
`SimpleWorker` (burst mode; broker.rq_workers.InlineWorker, which stops promptly), so they exercise exactly what a launch enqueued without the start-up time
of worker processes. The fake backend with no delays finishes each job in one run, without `Retry`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Iterator

import pytest

from sqlalchemy import select

from broker import clock as broker_clock
from broker.dispatch import DEFAULT_QUEUE
from broker.models import Backend, Lab
from broker.rq_workers import InlineWorker
from broker.runtime import Runtime


def run_queued_jobs(rt: Runtime) -> None:
    """Run every job waiting on the default queue and each backend's queue, then return."""
    with rt.session() as session:
        queues = [DEFAULT_QUEUE] + [b.queue_name for b in session.scalars(select(Backend))]
    InlineWorker(queues, connection=rt.redis).work(burst=True, with_scheduler=False, logging_level="WARNING")


def lab_state(rt: Runtime, lab_id: int) -> str | None:
    """The lab's state as the database has it now (a fresh session, so never a cached row)."""
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        return lab.state if lab else None


class Clock:
    """Real time plus an offset the test moves forward; install with `broker.clock.set_clock(clock.now)`."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Iterator[Clock]:
    """Time travel for the broker, the web threads and the in-process jobs; real time again afterwards
    (a module imports this fixture to use it)."""
    moved = Clock()
    broker_clock.set_clock(moved.now)
    yield moved
    broker_clock.set_clock(None)
