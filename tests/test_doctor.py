"""`labdesk doctor` as an operator runs it: every check OK on a ready stack (PostgreSQL, Redis, a real
worker, scheduler and tunnel, the guacd double, the fake backend, a registered LMS), and each failure the
way it reads on their screen: the database behind (or ahead of) the code, Redis down, a guacd that is a
closed port, one that answers garbage, one that says nothing and one the tunnel processes cannot reach, a
backend that is down, a bad setting, demo settings that only warn.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
from alembic.script import ScriptDirectory
from click.testing import Result as CliResult
from cryptography.fernet import Fernet
from sqlalchemy import text, update

from broker import doctor, guacd_status, migrate
from broker.db import engine_for
from broker.models import Backend
from broker.runtime import Runtime
from lti import keys, platforms
from tests.conftest import make_settings
from tests.support.guacd_double import GuacdDouble
from tests.support.http import free_port
from tests.support.processes import stop_process
from tests.support.services import create_pg_database, drop_pg_database
from tests.support.tunnel import TunnelProcess
from tests.support.waiting import wait_until
from tests.support.workers import ROOT, WorkerPool, settings_env
from tests.support.world import World
from tests.test_cli import BIN, CLOSED_REDIS, Labdesk, labdesk  # noqa: F401  (the `labdesk` fixture)

# What a production installation sets; without it the configuration check rightly warns.
PRODUCTION = {"LABDESK_DEV_LOGIN": "false", "LABDESK_EMULATOR": "false", "LABDESK_PUBLIC_URL": "https://labs.example.test"}


@pytest.fixture
def db_url(pg_only: str) -> str:
    """Doctor checks a production stack: PostgreSQL only."""
    return pg_only


@pytest.fixture
def guacd() -> Iterator[str]:
    with GuacdDouble() as double:
        yield f"{double.address[0]}:{double.address[1]}"


def lines(result: CliResult) -> dict[str, str]:
    """The report as `check -> whole line` (the summary line left out)."""
    found = {}
    for line in result.stdout.splitlines()[:-1]:
        assert line[:4].strip() in ("OK", "WARN", "FAIL", "SKIP") and line[4:6] == "  ", line
        found[line[6:].split(": ", 1)[0]] = line
    return found


def report(result: CliResult | str) -> dict[str, dict[str, str]]:
    """`--json` output as `check -> object`, checking its shape on the way."""
    rows = json.loads(result if isinstance(result, str) else result.stdout)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"check", "status", "reason", "action"}
        assert row["status"] in ("ok", "warn", "fail", "skip")
        assert row["reason"]
        assert bool(row["action"]) == (row["status"] in ("warn", "fail")), row
    return {row["check"]: row for row in rows}


def register_lms(rt: Runtime) -> None:
    platforms.add(rt, "https://lms.example.test", "client-1", "https://lms.example.test/auth", "https://lms.example.test/token",
                  "https://lms.example.test/jwks", deployments=("deployment-1",), name="Campus LMS")
    keys.ensure_keys(rt)


@pytest.fixture
def scheduler(rt: Runtime, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `labdesk scheduler`, seen once it has registered with rq."""
    log = open(tmp_path / "scheduler.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "app", "scheduler"], cwd=ROOT, env=settings_env(rt.settings),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: rt.redis.zcard("rq:cron_schedulers"), what="the scheduler to register")
        yield process
    finally:
        stop_process(process)
        log.close()


def reported(rt: Runtime, host: str) -> guacd_status.GuacdStatus:
    """This guacd as the tunnel processes report it, once one has."""
    def status() -> guacd_status.GuacdStatus:
        return guacd_status.guacd_status(rt.redis, (host,), rt.settings.guacd_check_interval)[0][0]

    wait_until(lambda: status().reporting, what=f"a tunnel process to report on guacd {host}")
    return status()


@pytest.fixture
def tunnel(rt: Runtime, tmp_path: Path) -> Iterator[Callable[[str], TunnelProcess]]:
    """Start a real `labdesk tunnel` relaying to the guacd hosts given (it checks them at start, then every minute)."""
    started: list[TunnelProcess] = []

    def start(hosts: str) -> TunnelProcess:
        settings = dataclasses.replace(rt.settings, guacd_hosts=tuple(hosts.split(",")), guacd_check_interval=60)
        started.append(TunnelProcess(settings, tmp_path, free_port()).start())
        return started[-1]

    yield start
    for process in started:
        process.stop()


def test_a_ready_stack_is_all_ok(labdesk: Labdesk, rt: Runtime, world: World, workers: WorkerPool,
                                 scheduler: subprocess.Popen[bytes], tunnel: Callable[[str], TunnelProcess],
                                 guacd: str, tmp_path: Path) -> None:
    register_lms(rt)
    workers.start()
    tunnel(guacd)
    wait_until(lambda: rt.redis.scard("rq:workers"), what="the worker to register")
    assert reported(rt, guacd).up_in == 1

    result = labdesk("doctor", LABDESK_GUACD_HOSTS=guacd, **PRODUCTION)
    assert result.exit_code == 0, result.output
    shown = lines(result)
    assert set(shown) == {"config", "database", "redis", "queue labdesk-default", "queue labdesk-backend-fake",
                          "scheduler", "backend fake", f"guacd {guacd}", "lti.platforms", "lti.signing_key"}
    assert all(line.startswith("OK ") for line in shown.values()), result.stdout
    assert result.stdout.splitlines()[-1] == "0 failed, 0 warnings, 10 ok, 0 skipped"
    assert "schema at the newest migration" in shown["database"]
    assert "1 worker serves it" in shown["queue labdesk-backend-fake"]
    assert shown[f"guacd {guacd}"].endswith("answers the Guacamole protocol; 1 of 1 tunnel processes reach it, 0 sessions")

    # The same from the console entry point, as a script reads it: exit status 0 and every check "ok".
    env = {**settings_env(rt.settings), **PRODUCTION, "LABDESK_GUACD_HOSTS": guacd}
    process = subprocess.run([str(BIN / "labdesk"), "doctor", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert {check: row["status"] for check, row in report(process.stdout).items()} == {check: "ok" for check in shown}


def test_a_database_behind_the_code_or_ahead_of_it_fails_with_what_to_run(labdesk: Labdesk, guacd: str) -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config(make_settings("sqlite://", Path("/tmp"))))
    newest = scripts.get_current_head()
    older = scripts.get_revision(newest).down_revision
    url = create_pg_database()
    try:
        migrate.upgrade(make_settings(url, Path("/tmp")), older)
        result = labdesk("doctor", "--json", LABDESK_DATABASE_URL=url, LABDESK_GUACD_HOSTS=guacd, **PRODUCTION)
        assert result.exit_code == 1
        found = report(result)
        assert found["database"]["status"] == "fail"
        assert found["database"]["reason"] == f"the schema is at {older}, this code needs {newest} (1 migration behind)"
        assert found["database"]["action"] == "run `labdesk db upgrade`"
        assert {found[c]["status"] for c in ("queues", "backends", "lti.platforms")} == {"skip"}

        with engine_for(url).begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        line = lines(labdesk("doctor", LABDESK_DATABASE_URL=url, LABDESK_GUACD_HOSTS=guacd, **PRODUCTION))["database"]
        assert line.startswith("FAIL  database: the schema is at revision 9999, which this code does not know")
        assert "the database is newer than the code -> roll out the newer code" in line
    finally:
        engine_for(url).dispose()
        drop_pg_database(url)


def test_redis_down_fails_and_skips_what_needs_it(labdesk: Labdesk, world: World, guacd: str) -> None:
    result = labdesk("doctor", LABDESK_REDIS_URL=CLOSED_REDIS, LABDESK_GUACD_HOSTS=guacd, **PRODUCTION)
    assert result.exit_code == 1
    shown = lines(result)
    assert shown["redis"].startswith("FAIL  redis: cannot reach 127.0.0.1:1: ")
    assert "Connection refused" in shown["redis"] and shown["redis"].endswith("-> check redis_url and that Redis runs")
    assert shown["queues"] == "SKIP  queues: needs the redis, which failed above"
    assert shown["scheduler"].startswith("SKIP")
    assert shown["database"].startswith("OK") and shown["backend fake"].startswith("OK")  # the rest is still checked


class Impostor:
    """A TCP server on loopback that is not guacd: it answers `reply` (or nothing) to whatever comes."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if self.reply is None:
                self.held.append(connection)  # accepted, and never a word
                continue
            with connection:
                connection.recv(1024)
                connection.sendall(self.reply)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_guacd_hosts_that_are_closed_talk_garbage_or_stay_silent_fail_each_with_its_reason(labdesk: Labdesk, world: World, guacd: str) -> None:
    closed = f"127.0.0.1:{free_port()}"
    garbage, silent = Impostor(b"HTTP/1.1 400 Bad Request\r\n\r\n"), Impostor(None)
    try:
        hosts = ",".join([guacd, closed, garbage.address, silent.address])
        result = labdesk("doctor", "--timeout", "1", LABDESK_GUACD_HOSTS=hosts, **PRODUCTION)
    finally:
        garbage.close()
        silent.close()
    assert result.exit_code == 1
    shown = lines(result)
    assert shown[f"guacd {guacd}"].startswith("OK    guacd")
    assert shown[f"guacd {closed}"] == f"FAIL  guacd {closed}: not reachable: Connection refused -> start guacd there, or fix guacd_hosts"
    not_guacd = "accepts connections but does not speak the Guacamole protocol (no `args` in answer to `select`)"
    assert shown[f"guacd {garbage.address}"] == f"FAIL  guacd {garbage.address}: {not_guacd} -> make guacd_hosts name guacd's port (4822), or restart guacd"
    assert shown[f"guacd {silent.address}"].startswith(f"FAIL  guacd {silent.address}: {not_guacd}")


class Switch:
    """A loopback port that answers garbage until `relay()`, then forwards every connection to `target`:
    a guacd that came up after the tunnel process last looked, or one the tunnel's network cannot reach."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.relaying = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def relay(self) -> None:
        self.relaying = True

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.relaying:
                with client:
                    client.sendall(b"garbage;")
                continue
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the other direction ended first and closed both
        finally:
            source.close()
            sink.close()

    def close(self) -> None:
        self.listener.close()


def test_a_guacd_the_tunnel_processes_do_not_reach_warns(labdesk: Labdesk, rt: Runtime, world: World,
                                                         tunnel: Callable[[str], TunnelProcess], guacd: str) -> None:
    switch = Switch(guacd)
    try:
        tunnel(switch.address)
        assert reported(rt, switch.address).up_in == 0  # the tunnel found no guacd there
        switch.relay()
        result = labdesk("doctor", "--json", LABDESK_GUACD_HOSTS=switch.address, **PRODUCTION)
    finally:
        switch.close()
    found = report(result)[f"guacd {switch.address}"]
    assert found == {"check": f"guacd {switch.address}", "status": "warn",
                     "reason": "answers the Guacamole protocol here, but only 0 of 1 tunnel processes reach it, 0 sessions",
                     "action": "check the network between the tunnel hosts and guacd"}


def test_a_backend_that_is_down_fails_and_a_disabled_one_is_skipped(labdesk: Labdesk, rt: Runtime, world: World, guacd: str) -> None:
    with rt.session() as session:
        session.execute(update(Backend).where(Backend.id == world.backend_id).values(config={"down": True}))
        session.add_all([Backend(name="retired", kind="fake", enabled=False, config={}),
                         Backend(name="mystery", kind="not-installed", config={})])
        session.commit()
    result = labdesk("doctor", "--json", LABDESK_GUACD_HOSTS=guacd, **PRODUCTION)
    assert result.exit_code == 1
    found = report(result)
    assert found["backend fake"] == {"check": "backend fake", "status": "fail", "reason": "the fake backend says it is not available",
                                     "action": "check the backend's service, or disable it (`labdesk backends disable`)"}
    assert found["backend retired"]["status"] == "skip" and found["backend retired"]["reason"] == "disabled"
    assert found["backend mystery"]["status"] == "fail"
    assert found["backend mystery"]["reason"].startswith("the not-installed backend's health check raised: no connector kind 'not-installed'")
    assert "queue labdesk-backend-retired" not in found  # a disabled backend's queue needs no worker


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("LABDESK_KEEPALIVE_INTERVAL", "abc", "LABDESK_KEEPALIVE_INTERVAL: expected a positive whole number, got 'abc'"),
        ("LABDESK_REDIS_URL", "127.0.0.1:6379", "redis_url: expected a redis://, rediss:// or unix:// URL"),
        ("LABDESK_DATABASE_URL", "postgres+nodriver://labdesk:s3cret@db/labdesk", "database_url: not a database URL SQLAlchemy can use"),
    ],
)
def test_a_bad_setting_fails_naming_the_key_and_checks_nothing_else(labdesk: Labdesk, variable: str, value: str, reason: str) -> None:
    result = labdesk("doctor", "--json", **{variable: value})
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert rows[0]["check"] == "config" and rows[0]["status"] == "fail" and rows[0]["reason"] == reason
    assert rows[-1] == {"check": "other checks", "status": "skip", "reason": "they need a configuration that loads", "action": ""}


def test_demo_settings_warn_without_failing(labdesk: Labdesk, tmp_path: Path, sqlite_db_url: str, guacd: str) -> None:
    key_file = tmp_path / "encryption.key"
    key_file.write_text(Fernet.generate_key().decode())
    key_file.chmod(0o644)
    config = tmp_path / "labdesk.toml"
    config.write_text('secret_key = "from-the-file"\n')
    config.chmod(0o644)
    result = labdesk("doctor", LABDESK_CONFIG=str(config), LABDESK_SECRET_KEY=None, LABDESK_ENCRYPTION_KEYS=None,  # type: ignore[arg-type]
                     LABDESK_DATABASE_URL=sqlite_db_url, LABDESK_GUACD_HOSTS=guacd)
    assert result.exit_code == 0, result.output  # warnings are for the operator to weigh; only a FAIL fails
    shown = lines(result)
    assert shown["config"] == f"OK    config: valid; read from {config} and the environment"
    assert {check for check, line in shown.items() if line.startswith("WARN")} == {
        "config.database_url", "config.dev_login", "config.emulator", "config.public_url", "config.encryption_keys",
        "config.file", "queue labdesk-default", "scheduler", "backends", "lti.platforms", "lti.signing_key",
    }
    assert shown["config.dev_login"] == "WARN  config.dev_login: the development sign-in is on: anyone can sign in as anyone -> set dev_login = false"
    assert shown["config.encryption_keys"].endswith(f"(mode 0644) -> chmod 600 {key_file}")
    assert shown["config.file"].endswith(f"-> chmod 600 {config}")
    assert shown["backends"] == "WARN  backends: none registered: no lab can start -> register one: `labdesk backends add NAME --kind KIND`"


def test_a_check_that_hangs_is_reported_and_does_not_hold_up_the_others() -> None:
    released = threading.Event()
    checks = [
        doctor.Check("stuck", lambda: released.wait(60) and doctor.ok("stuck", "late"), 0.2, if_slow="look at it"),
        doctor.Check("quick", lambda: doctor.ok("quick", "fine"), 5),
        doctor.Check("broken", lambda: 1 / 0, 5),
    ]
    try:
        results = doctor.run_checks(checks)
    finally:
        released.set()
    assert results == [
        doctor.fail("stuck", "no answer within 0.2 s", "look at it"),
        doctor.ok("quick", "fine"),
        doctor.fail("broken", "the check itself failed: division by zero", doctor.BROKEN),
    ]
