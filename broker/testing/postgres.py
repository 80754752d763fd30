"""Throw-away PostgreSQL databases for tests and benchmarks, so they never touch a real one."""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine, text

from broker.db import engine_for


def create_scratch_database(admin_url: str, prefix: str) -> str:
    """Create `<prefix>_<random>` through the server of `admin_url`; returns the new database's URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_scratch_database(admin_url: str, url: str) -> None:
    """Drop a database made by `create_scratch_database`, closing this process's connections first."""
    engine_for(url).dispose()
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _admin(admin_url: str, statement: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(statement))
    engine.dispose()
