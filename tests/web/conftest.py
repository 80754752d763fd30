"""Fixtures for the web tests: the app served over HTTP, learners with their own cookies, a movable clock."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from app import create_app
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer, serve
from tests.support.inline import clock  # noqa: F401  (a fixture)


@pytest.fixture
def server(rt: Runtime) -> Iterator[LiveServer]:
    """The real app on a free port of 127.0.0.1, on the test's runtime (real database and Redis)."""
    yield from serve(create_app(rt.settings, rt))


@pytest.fixture
def learner(server: LiveServer) -> Callable[[str], Learner]:
    """Signs a new browser in under a name and returns it."""

    def sign_in(name: str) -> Learner:
        person = Learner(server.url)
        response = person.sign_in(name)
        assert response.status_code == 200, response.text
        return person

    return sign_in
