"""A private Redis and a private PostgreSQL 15 that a fault test may stop and restart.

The machine's own servers on 6379 and 5432 serve every other test (and other sessions); restarting them
would break those. So a fault test gets its own `redis-server` and its own PostgreSQL cluster on free
loopback ports, and restarts those. Both keep what the production ones keep: the Redis, like the
machine's, saves nothing to disk (`--save '' --appendonly no`), so a restart brings it back EMPTY, queued
jobs and keepalive scores lost; the PostgreSQL cluster keeps its data across a restart, as a real one does.

Every process started here is stopped at teardown, by its PID (the postmaster's is read from its pid file).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from redis import Redis
from redis.exceptions import RedisError

from broker import migrate, runtime
from broker.config import Settings, load_settings
from broker.runtime import Runtime
from broker.testing.fake import reset_memory
from tests.support.http import free_port
from tests.support.processes import stop_process

REDIS_SERVER = "/usr/bin/redis-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


def unavailable(reason: str) -> None:
    """Skip saying why; under CI=true fail: scripts/test installs redis-server and postgresql there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs a private {reason}", pytrace=False)
    pytest.skip(reason)


class PrivateRedis:
    """A `redis-server` of our own on a free loopback port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait(self._answers, f"redis-server on port {self.port}", self.directory / "redis.log", self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        """Stop, then start on the same port: it comes back empty."""
        self.stop()
        self.start()

    def _answers(self) -> bool:
        client = Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except RedisError:
            return False
        finally:
            client.close()


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own (initdb + pg_ctl as the `postgres` OS user: initdb refuses root),
    listening only on 127.0.0.1 at a free port, trust authentication, with one migrated database."""

    def __init__(self, database: str = "labdesk") -> None:
        self.port = free_port()
        self.database = database
        # Not under pytest's tmp_path: its parents are root's, mode 0700, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="labdesk-private-pg-"))
        self.data = self.root / "data"
        postgres = pwd.getpwnam(PG_USER)
        os.chown(self.root, postgres.pw_uid, postgres.pw_gid)

    @property
    def admin_url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the migrated database."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        if not self.data.exists():
            self._as_postgres([PG_BIN / "initdb", "-D", self.data, "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -c fsync=off"
        self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "postgres.log", "-o", options, "-w", "-t", "30", "start"])

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while the cluster runs (its pid file), else None."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """A fast shutdown (what a restart by systemd or an upgrade does): every connection is cut."""
        pid = self.pid
        if pid is None:
            return
        subprocess.run(_runuser([PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop"]),
                       capture_output=True)
        _ensure_gone(pid)

    def restart(self) -> None:
        """Stop, then start on the same port; the data stays."""
        self.stop()
        self.start()

    def create_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
        migrate.upgrade(load_settings(environ={}, overrides={"database_url": self.url, "data_dir": str(self.root)}))

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_postgres(self, argv: list[object]) -> None:
        done = subprocess.run(_runuser(argv), capture_output=True, text=True)
        if done.returncode != 0:
            log = self.root / "postgres.log"
            extra = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}{extra}")


def _runuser(argv: list[object]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *map(str, argv)]


def _ensure_gone(pid: int, grace: float = 10) -> None:
    """The postmaster has exited; SIGKILL it (by PID) if pg_ctl could not stop it in time."""
    deadline = time.monotonic() + grace
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _wait(probe, what: str, log: Path, process: subprocess.Popen[bytes], timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            text = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start:\n{text}")
        time.sleep(0.05)


def redis_missing_reason() -> str:
    if not os.access(REDIS_SERVER, os.X_OK):
        return f"redis-server ({REDIS_SERVER}) is not installed (apt-get install redis-server)"
    return ""


def postgres_missing_reason() -> str:
    if not all(os.access(PG_BIN / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
        return f"PostgreSQL 15 ({PG_BIN}) is not installed (apt-get install postgresql)"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "a private PostgreSQL cluster needs root and runuser, to run initdb as the postgres user"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"there is no '{PG_USER}' OS user to own a private PostgreSQL cluster"
    return ""


@contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    reason = redis_missing_reason()
    if reason:
        unavailable(reason)
    server = PrivateRedis(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def private_postgres(database: str = "labdesk") -> Iterator[PrivatePostgres]:
    """A running private cluster with a migrated database named `database`; removed afterwards."""
    reason = postgres_missing_reason()
    if reason:
        unavailable(reason)
    server = PrivatePostgres(database)
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.remove()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis a test may restart (tests/support/private_services.py)."""
    with private_redis(tmp_path / "private-redis") as server:
        yield server


@pytest.fixture
def restartable_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL 15 cluster with a migrated database, which a test may restart."""
    with private_postgres() as server:
        yield server


@pytest.fixture(name="rt")
def runtime_on_the_settings_redis(settings: Settings) -> Iterator[Runtime]:
    """The `rt` fixture for a test whose settings name a private Redis: a runtime that connects to it, rather
    than the suite's shared client (tests/conftest.py). Import it into the module to use it."""
    instance = Runtime(settings)
    runtime.install(instance)
    reset_memory()
    yield instance
    runtime.install(None)
    instance.close()
