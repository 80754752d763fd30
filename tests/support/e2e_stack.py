"""Fixtures shared by the end-to-end tests of a real desktop behind the LMS emulator (tests/e2e): SQLite
shared by every process, a guacd double, the web and tunnel ports, and the settings that bind them.

A test module imports the fixtures it uses by name (pytest finds them in the module's namespace)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis

from broker.config import Settings
from tests.conftest import make_settings
from tests.support.guacd_double import GuacdDouble, guacd_doubles
from tests.support.http import free_port


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    """SQLite shared by the web threads, the worker and the tunnel (the embedded default)."""
    return sqlite_db_url


@pytest.fixture
def guacd() -> Iterator[GuacdDouble]:
    with guacd_doubles() as start:
        yield start(sync_interval=0.5, frame_color=(40, 90, 160), frame_size=(800, 500))


@pytest.fixture
def ports() -> dict[str, int]:
    return {"web": free_port(), "tunnel": free_port()}


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, guacd: GuacdDouble, ports: dict[str, int]) -> Settings:
    return make_settings(
        db_url, tmp_path,
        public_url=f"http://127.0.0.1:{ports['web']}",
        tunnel_listen=f"127.0.0.1:{ports['tunnel']}",
        guacd_hosts=(f"127.0.0.1:{guacd.address[1]}",),
        default_backend="local",  # what the emulator's demo link opens its labs on
    )
