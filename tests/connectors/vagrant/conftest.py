"""The real Vagrant backend shared by a module's tests (setting it up adds a box: ~2 s)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.support.vagrant import vagrant_backend


@pytest.fixture(scope="module")
def backend() -> Iterator[dict[str, Any]]:
    with vagrant_backend() as config:
        yield config
