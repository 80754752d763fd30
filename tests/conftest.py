"""Fixtures: settings on real services, a runtime per test, worker processes, and a world of data.

Database tests run on both SQLite (the embedded default) and PostgreSQL (production); `db_url` is
parametrised so each such test runs once per database. Redis uses database 13, flushed per test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from cryptography.fernet import Fernet
from redis import Redis
from sqlalchemy import text

from broker import migrate, runtime
from broker.config import Settings, load_settings
from broker.db import engine_for
from broker.models import Base
import lti.models  # noqa: F401  (the LTI tables are part of the schema the fixtures empty)
from broker.runtime import Runtime
from broker.testing.fake import reset_memory
from tests.support.services import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
    require_postgres,
    require_redis,
)
from tests.support.http import free_port
from tests.support.sshd import Sshd, sshd_unavailable_reason
from tests.support.workers import WorkerPool
from tests.support.world import World, make_world


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    require_postgres()
    url = create_pg_database()
    migrate.upgrade(load_settings(environ={}, overrides={"database_url": url, "data_dir": "/tmp"}))
    yield url
    drop_pg_database(url)


def _empty_pg(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
    with engine_for(url).begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'labdesk.sqlite3'}"
        migrate.upgrade(load_settings(environ={}, overrides={"database_url": url, "data_dir": str(tmp_path)}))
        return url
    url = request.getfixturevalue("pg_url")
    _empty_pg(url)
    return url


@pytest.fixture
def sqlite_db_url(tmp_path: Path) -> str:
    """A migrated SQLite database only: for tests that start processes (the embedded default's case),
    where running them again on PostgreSQL would test nothing new."""
    url = f"sqlite:///{tmp_path / 'labdesk.sqlite3'}"
    migrate.upgrade(load_settings(environ={}, overrides={"database_url": url, "data_dir": str(tmp_path)}))
    return url


@pytest.fixture
def pg_only(pg_url: str) -> str:
    """The PostgreSQL database, emptied: for tests of production-only behaviour (real concurrency)."""
    _empty_pg(pg_url)
    return pg_url


@pytest.fixture
def redis_client() -> Iterator[Redis]:
    require_redis()
    client = Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()  # its pooled connections, which every test would otherwise leave open


def make_settings(db_url: str, data_dir: Path, **overrides: object) -> Settings:
    values = {
        "database_url": db_url,
        "redis_url": REDIS_URL,
        "data_dir": str(data_dir),
        "encryption_keys": (Fernet.generate_key().decode(),),
        "secret_key": "test-secret",
        "poll_interval": 1,
        "presence_batch_ms": 0,  # one Redis write per keepalive: tests see it at once (tests/test_presence_buffer.py covers batching)
        **overrides,
    }
    return load_settings(environ={}, overrides=values)


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(db_url, tmp_path)


@pytest.fixture
def rt(settings: Settings, redis_client: Redis) -> Iterator[Runtime]:
    instance = Runtime(settings, redis=redis_client)
    runtime.install(instance)
    reset_memory()
    yield instance
    runtime.install(None)
    instance.close()  # else every test leaves its pooled connections open (fds past 1024 break select())


@pytest.fixture
def port() -> int:
    """A free port for a live server whose own URL (`public_url`) must be in its settings first."""
    return free_port()


@pytest.fixture
def fake_dir(tmp_path: Path) -> Path:
    return tmp_path / "fake-backend"


@pytest.fixture
def world(rt: Runtime, fake_dir: Path) -> World:
    """A learner, a course and an activity on a file-backed fake backend (shared with worker processes)."""
    return make_world(rt, config={"state_dir": str(fake_dir)})


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(settings, tmp_path)
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """A real OpenSSH server (tests/support/sshd.py) on 127.0.0.1; add throwaway users with `sshd.add_user(public_key=…)`."""
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Sshd() as server:
        yield server
