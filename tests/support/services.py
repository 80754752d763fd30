"""Reaching the real PostgreSQL and Redis the tests use, with a clear skip when they are absent."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

PG_ADMIN_URL = os.environ.get("LABDESK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LABDESK_TEST_REDIS", "redis://127.0.0.1:6379/13")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_redis() -> None:
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379 (scripts/test starts it)")


def require_postgres() -> None:
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (scripts/test starts it)")


def create_pg_database() -> str:
    """A fresh, uniquely named PostgreSQL database for this test session; returns its URL."""
    from sqlalchemy import create_engine, text

    name = f"labdesk_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    from broker.db import engine_for

    engine_for(url).dispose()
    name = url.rsplit("/", 1)[1]
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
