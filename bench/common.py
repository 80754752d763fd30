"""What every benchmark shares: its own Redis db and PostgreSQL database, settings, workers, the summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable

from cryptography.fernet import Fernet

from broker.config import Settings, load_settings
from broker.testing.postgres import create_scratch_database, drop_scratch_database

ROOT = Path(__file__).resolve().parent.parent
# Benchmarks keep off the test suite's Redis db (13) and the developers' default (0).
REDIS_URL = os.environ.get("LABDESK_BENCH_REDIS", "redis://127.0.0.1:6379/12")
PG_ADMIN_URL = os.environ.get("LABDESK_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def bench_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a benchmark run: its own database, Redis db and data directory, fixed keys."""
    values = {
        "database_url": database_url,
        "redis_url": REDIS_URL,
        "data_dir": str(data_dir),
        "encryption_keys": (Fernet.generate_key().decode(),),
        "secret_key": "bench-secret-" + uuid.uuid4().hex,
        **overrides,
    }
    return load_settings(environ={}, overrides=values)


def create_pg_database() -> str:
    """A fresh PostgreSQL database named labdesk_bench_<random>; returns its SQLAlchemy URL."""
    return create_scratch_database(PG_ADMIN_URL, "labdesk_bench")


def drop_pg_database(url: str) -> None:
    drop_scratch_database(PG_ADMIN_URL, url)


def scratch_database_url(kind: str, work: Path) -> str:
    """A fresh database of `kind`: a scratch PostgreSQL database, or an SQLite file in `work`."""
    if kind == "postgres":
        return create_pg_database()
    if kind == "sqlite":
        return f"sqlite:///{work / 'labdesk.sqlite3'}"
    raise SystemExit(f"unknown database {kind!r}: postgres or sqlite")



def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child process (worker, gunicorn) exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABDESK_")}
    env.update(
        LABDESK_DATA_DIR=settings.data_dir,
        LABDESK_DATABASE_URL=settings.sqlalchemy_url,
        LABDESK_REDIS_URL=settings.redis_url,
        LABDESK_SECRET_KEY=settings.secret_key,
        LABDESK_POLL_INTERVAL=str(settings.poll_interval),
        LABDESK_ENCRYPTION_KEYS=",".join(settings.encryption_keys),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class Children:
    """Processes a benchmark starts; `stop` ends each of them by its own PID, and only them."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        handle = open(log, "wb")
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_workers(self, settings: Settings, count: int, log_dir: Path) -> None:
        for index in range(count):
            self.start([sys.executable, "-m", "app", "worker"], settings_env(settings), log_dir / f"worker-{index}.log")

    def stop(self, timeout: float = 20) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def wait_for(probe, timeout: float, interval: float = 0.2, what: str = "") -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def summary(title: str, figures: Iterable[tuple[str, object, str]], goals: Iterable[str] = (), notes: Iterable[str] = ()) -> None:
    """The final block every benchmark prints: `name: value unit` lines, then goals and notes."""
    print()
    print(f"== {title} ==")
    for name, value, unit in figures:
        shown = f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value}"
        print(f"{name}: {shown} {unit}".rstrip())
    for goal in goals:
        print(f"goal: {goal}")
    for note in notes:
        print(f"note: {note}")
