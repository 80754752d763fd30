"""The objects every use case needs (settings, database sessions, Redis, vault, connectors, dispatcher).

Built once per process from settings: by `create_app` in the web, by the CLI, and lazily in rq workers,
whose jobs receive only primitive ids and find everything else here.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Settings, load_settings
from broker.connector import Connector
from broker.db import session_factory
from broker.dispatch import Dispatcher, RQDispatcher
from broker.models import Backend
from broker.registry import connector_class
from broker.secrets import Vault


class Runtime:
    """Process-wide services; cheap to pass around, created once."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher | None = None, redis: Redis | None = None) -> None:
        self.settings = settings
        self.sessions: sessionmaker[Session] = session_factory(settings.sqlalchemy_url)
        self.redis = redis or Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.vault = Vault.from_settings(settings)
        self.dispatcher: Dispatcher = dispatcher or RQDispatcher(self.redis)
        self._connectors: dict[tuple[int, str], Connector] = {}

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        """Close the database connections this runtime pooled (tests and short-lived tools; a server keeps
        its pool for its whole life). A closed runtime reconnects if used again."""
        engine = self.sessions.kw.get("bind")
        if engine is not None:
            engine.dispose()

    def connector(self, backend: Backend) -> Connector:
        """The live connector for a backend row, with its credentials decrypted (in memory only)."""
        key = (backend.id, repr((backend.kind, backend.config, backend.secrets)))
        if key not in self._connectors:
            config: dict[str, Any] = {**backend.config, **self.vault.open(backend.secrets)}
            self._connectors[key] = connector_class(backend.kind)(backend.name, config)
        return self._connectors[key]


_current: Runtime | None = None


def current() -> Runtime:
    """The process's runtime, built from the environment's settings on first use (rq workers)."""
    global _current
    if _current is None:
        _current = Runtime(load_settings())
    return _current


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the process's runtime (the app factory, CLI, tests and the simulation)."""
    global _current
    _current = runtime
