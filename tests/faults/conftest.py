"""Fixtures the fault tests share."""

from __future__ import annotations

import pytest

from tests.support.workers import WorkerPool


@pytest.fixture
def pool(workers: WorkerPool) -> WorkerPool:
    """Two `labdesk worker` processes, started first: they boot while the web does."""
    workers.start(2)
    return workers
