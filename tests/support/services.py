"""Reaching the real PostgreSQL and Redis the tests use, with a clear skip when they are absent."""

from __future__ import annotations

import os
import socket

import pytest

from broker.testing.postgres import create_scratch_database, drop_scratch_database

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
    """A fresh PostgreSQL database named labdesk_test_<random>; returns its SQLAlchemy URL."""
    return create_scratch_database(PG_ADMIN_URL, "labdesk_test")


def drop_pg_database(url: str) -> None:
    drop_scratch_database(PG_ADMIN_URL, url)
