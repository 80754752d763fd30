"""`labdesk doctor`: is this installation ready to serve, and if not, what to do about it?

An operator runs it before rolling out, after a restart, or when something is wrong. Each check is a plain
function that returns results (OK, WARN, FAIL or SKIP, a short reason, what to do); the checks only read
(building the runtime, as every command does, still creates a fresh install's generated keys). Each check runs in a thread of its own with its own timeout, so one dead dependency (a guacd that
accepts connections and says nothing, a cloud API that hangs) is reported as such and never hangs the
command: the whole run takes at most a few timeouts.

The broker may not import LTI or the tunnel (.importlinter), so their checks come through `add_checks`:
the composition root (app.py) registers `lti.doctor_checks` and the guacd checks built on the tunnel's own
protocol probe. See docs/operations.md, "labdesk doctor".
"""

from __future__ import annotations

import enum
import json
import math
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import click
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.cron_scheduler_registry import get_registry_key as cron_registry_key
from rq.defaults import DEFAULT_CRON_SCHEDULER_TTL
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from broker import config, guacd_status, migrate
from broker.config import Settings, load_settings
from broker.dispatch import DEFAULT_QUEUE
from broker.errors import ConfigError
from broker.models import Backend
from broker.runtime import Runtime
from broker.secrets import Vault

DEFAULT_TIMEOUT = 5.0
BROKEN = "the reason says what broke; the other checks still ran"


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Result:
    """One line of the report: which check, how it went, why, and what the operator should do."""

    check: str
    status: Status
    reason: str
    action: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "reason": self.reason, "action": self.action}

    def line(self) -> str:
        text = f"{self.status.name:<4}  {self.check}: {self.reason}"
        return f"{text} -> {self.action}" if self.action else text


def ok(check: str, reason: str) -> Result:
    return Result(check, Status.OK, reason)


def warn(check: str, reason: str, action: str) -> Result:
    return Result(check, Status.WARN, reason, action)


def fail(check: str, reason: str, action: str) -> Result:
    return Result(check, Status.FAIL, reason, action)


def skip(check: str, reason: str) -> Result:
    return Result(check, Status.SKIP, reason)


@dataclass(frozen=True)
class Check:
    """A check to run in its own thread; `needs` ("database", "redis") skips it when that check failed."""

    name: str
    run: Callable[[], Result | list[Result]]
    timeout: float
    needs: tuple[str, ...] = ()
    if_slow: str = "find out why it hangs: the other checks did not wait for it"


@dataclass(frozen=True)
class Context:
    """What registered checks get: valid settings, a runtime, the per-check timeout, what failed so far."""

    settings: Settings
    rt: Runtime
    timeout: float
    failed: frozenset[str] = field(default_factory=frozenset)


CheckSource = Callable[[Context], list[Check]]
_SOURCES: list[CheckSource] = []


def add_checks(source: CheckSource) -> None:
    """Add checks of a package the broker must not import (LTI, the tunnel); app.py calls this."""
    if source not in _SOURCES:
        _SOURCES.append(source)


# -- running --------------------------------------------------------------------------------------------
def run_checks(checks: Sequence[Check], failed: frozenset[str] = frozenset()) -> list[Result]:
    """Run every check at once, each bounded by its own timeout; results in the checks' order."""
    boxes = {id(check): _start(check) for check in checks if not set(check.needs) & failed}
    results: list[Result] = []
    for check in checks:
        missing = [need for need in check.needs if need in failed]
        if missing:
            results.append(skip(check.name, f"needs the {missing[0]}, which failed above"))
            continue
        results += _finish(check, boxes[id(check)])
    return results


@dataclass
class _Box:
    deadline: float
    thread: threading.Thread | None = None
    results: list[Result] | None = None


def _start(check: Check) -> _Box:
    box = _Box(deadline=time.monotonic() + check.timeout)

    def target() -> None:
        try:
            outcome = check.run()
            box.results = outcome if isinstance(outcome, list) else [outcome]
        except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check, not a crashed doctor
            box.results = [fail(check.name, f"the check itself failed: {first_line(exc)}", BROKEN)]

    # A daemon thread: a check still hanging when the command ends must not keep the process alive.
    box.thread = threading.Thread(target=target, name=f"doctor {check.name}", daemon=True)
    box.thread.start()
    return box


def _finish(check: Check, box: _Box) -> list[Result]:
    assert box.thread is not None
    box.thread.join(max(0.0, box.deadline - time.monotonic()))
    if box.results is None:
        return [fail(check.name, f"no answer within {check.timeout:g} s", check.if_slow)]
    return box.results


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return next(iter(text.splitlines()), type(exc).__name__)


def diagnose(timeout: float = DEFAULT_TIMEOUT, environ: Mapping[str, str] | None = None) -> list[Result]:
    """Every check, in order: configuration; database and Redis; then what needs them."""
    results, settings = check_config(environ)
    if settings is None:
        return results + [skip("other checks", "they need a configuration that loads")]
    try:
        rt = Runtime(settings, redis=Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout))
    except (ConfigError, OSError, ImportError, SQLAlchemyError) as exc:
        return results + [fail("config", f"cannot start: {first_line(exc)}", "fix the setting it names (docs/configuration.md)")]
    try:
        first = run_checks([
            Check("database", lambda: check_database(settings, timeout), timeout,
                  if_slow="check database_url and that the database answers (a firewall dropping packets?)"),
            Check("redis", lambda: check_redis(rt.redis), timeout, if_slow="check redis_url and that Redis answers"),
        ])
        failed = frozenset(r.check for r in first if r.status is Status.FAIL)
        context = Context(settings, rt, timeout, failed)
        rest = [
            Check("queues", lambda: check_queues(rt), timeout, needs=("database", "redis")),
            Check("scheduler", lambda: check_scheduler(rt.redis), timeout, needs=("redis",)),
            Check("backends", lambda: check_backends(rt, timeout), 2 * timeout + 1, needs=("database",)),
        ]
        for source in _SOURCES:
            rest += source(context)
        return results + first + run_checks(rest, failed)
    finally:
        rt.redis.close()


# -- configuration --------------------------------------------------------------------------------------
def check_config(environ: Mapping[str, str] | None = None) -> tuple[list[Result], Settings | None]:
    """Load and validate the settings as every process does; then the values that load but are unsafe."""
    environ = os.environ if environ is None else environ
    source = _config_file(environ)
    try:
        settings = load_settings(environ=environ)
    except ConfigError as exc:
        return [fail("config", str(exc), "fix that setting (docs/configuration.md)")], None
    broken = _bad_values(settings)
    if broken:
        return broken, None
    where = f"{source} and the environment" if source else "defaults and the environment (no config file)"
    return [ok("config", f"valid; read from {where}")] + production_warnings(settings, source), settings


def _config_file(environ: Mapping[str, str]) -> Path | None:
    """The TOML file load_settings reads, if any (same rule: LABDESK_CONFIG, else ./labdesk.toml)."""
    named = environ.get(f"{config.ENV_PREFIX}CONFIG")
    if named:
        return Path(named)
    return Path("labdesk.toml") if Path("labdesk.toml").exists() else None


def _bad_values(settings: Settings) -> list[Result]:
    """Values load_settings accepts as strings but nothing can use; each names its key."""
    problems: list[Result] = []
    # URLs may carry a password: these two lines never repeat the value.
    try:
        make_url(settings.sqlalchemy_url).get_dialect()
    except ArgumentError:  # NoSuchModuleError too: a dialect or driver SQLAlchemy does not know
        problems.append(fail("config", "database_url: not a database URL SQLAlchemy can use",
                             "set e.g. postgresql+psycopg://labdesk@db/labdesk"))
    if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append(fail("config", "redis_url: expected a redis://, rediss:// or unix:// URL", "set e.g. redis://redis:6379/0"))
    if not settings.public_url.startswith(("http://", "https://")):
        problems.append(fail("config", f"public_url: expected an https:// URL, got {settings.public_url!r}",
                             "set the address learners reach LabDesk at, e.g. https://labs.example.edu"))
    if settings.encryption_keys:
        try:
            Vault(list(settings.encryption_keys))
        except ConfigError as exc:
            problems.append(fail("config", str(exc), "generate one with Fernet.generate_key() (docs/configuration.md)"))
    return problems


def production_warnings(settings: Settings, config_file: Path | None) -> list[Result]:
    """Choices that are right for a demo and wrong for learners: each a WARN naming its setting."""
    found: list[Result] = []
    sqlite = settings.sqlalchemy_url.startswith("sqlite")
    if sqlite:
        found.append(warn("config.database_url", "SQLite: one host, one writer at a time; for a demo, not for production",
                          "use PostgreSQL (database_url), then `labdesk db upgrade`"))
    if settings.dev_login:
        found.append(warn("config.dev_login", "the development sign-in is on: anyone can sign in as anyone",
                          "set dev_login = false"))
    if settings.emulator:
        found.append(warn("config.emulator", "the built-in LMS emulator is on: anyone can launch labs through it",
                          "set emulator = false"))
    if settings.open_registration:
        found.append(warn("config.open_registration", "any LMS can register itself (Dynamic Registration without an invitation)",
                          "set open_registration = false and invite platforms (`labdesk platforms invite`)"))
    if not settings.public_url.startswith("https://"):
        found.append(warn("config.public_url", f"{settings.public_url} is not https: cookies are not Secure and LMS iframes drop them",
                          "serve LabDesk over TLS and set public_url = https://…"))
    elif settings.tunnel_url.startswith("ws://"):
        found.append(warn("config.tunnel_url", "ws:// under an https:// public_url: browsers block the desktop",
                          "set tunnel_url to a wss:// URL"))
    found += _shared_keys(settings, sqlite)
    found += _open_key_files(settings, config_file)
    return found


def _shared_keys(settings: Settings, sqlite: bool) -> list[Result]:
    """Keys generated into data_dir differ per host: fine on one SQLite host, broken behind a load balancer."""
    if sqlite:
        return []
    found = []
    if not settings.secret_key:
        found.append(warn("config.secret_key", "generated per host into data_dir: sessions signed by one web host are refused by another",
                          "set the same secret_key (LABDESK_SECRET_KEY) on every host"))
    if not settings.encryption_keys:
        found.append(warn("config.encryption_keys", "generated per host into data_dir: credentials sealed on one host cannot be opened on another",
                          "set the same encryption_keys (LABDESK_ENCRYPTION_KEYS) on every host"))
    return found


def _open_key_files(settings: Settings, config_file: Path | None) -> list[Result]:
    """Files holding secrets that other users of the host can read."""
    data = Path(settings.data_dir)
    files = []
    if not settings.secret_key:
        files.append(("config.secret_key", data / "secret.key"))
    if not settings.encryption_keys:
        files.append(("config.encryption_keys", data / "encryption.key"))
    if config_file is not None and (settings.secret_key or settings.encryption_keys or settings.admin_oidc_client_secret):
        files.append(("config.file", config_file))  # only worth a warning when the file may hold a secret
    found = []
    for check, path in files:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append(warn(check, f"{path} holds secrets and other users may read it (mode {mode:04o})",
                              f"chmod 600 {path}"))
    return found


# -- database -------------------------------------------------------------------------------------------
def check_database(settings: Settings, timeout: float) -> Result:
    """Connect (a fresh connection, not a pooled one) and compare the schema's revision with the code's."""
    url = make_url(settings.sqlalchemy_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return fail("database", f"no database file at {url.database}", "run `labdesk db upgrade` to create it")
    connect_args = {"connect_timeout": max(1, math.ceil(timeout))} if url.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
            server = ".".join(map(str, connection.dialect.server_version_info or ())) or "?"
    except SQLAlchemyError as exc:
        return fail("database", f"cannot connect to {shown}: {first_line(exc)}",
                    "check database_url and that the database server runs and accepts LabDesk")
    finally:
        engine.dispose()
    return _schema_result(settings, current, f"{url.get_backend_name()} {server}")


def _schema_result(settings: Settings, current: set[str], server: str) -> Result:
    scripts = ScriptDirectory.from_config(migrate.alembic_config(settings))
    heads = set(scripts.get_heads())
    newest = ", ".join(sorted(heads))
    if not current:
        return fail("database", f"connected ({server}), but no migration was ever applied", "run `labdesk db upgrade`")
    unknown = sorted(rev for rev in current if not _known(scripts, rev))
    if unknown:
        return fail("database", f"the schema is at revision {unknown[0]}, which this code does not know (it knows up to {newest}): "
                    "the database is newer than the code", "roll out the newer code, or point database_url at the right database")
    if current == heads:
        return ok("database", f"connected ({server}); schema at the newest migration, {newest}")
    behind = len(list(scripts.iterate_revisions(tuple(heads), tuple(current)))) - len(current & heads)
    return fail("database", f"the schema is at {', '.join(sorted(current))}, this code needs {newest} "
                f"({behind} migration{'s' if behind != 1 else ''} behind)", "run `labdesk db upgrade`")


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


# -- Redis, queues, scheduler ---------------------------------------------------------------------------
def check_redis(redis: Redis) -> Result:
    """A PING round trip, the server's version, and an eviction policy that cannot drop jobs."""
    where = _redis_address(redis)
    try:
        started = time.perf_counter()
        redis.ping()
        round_trip = (time.perf_counter() - started) * 1000
    except RedisError as exc:
        return fail("redis", f"cannot reach {where}: {first_line(exc)}", "check redis_url and that Redis runs")
    try:
        info = redis.info("server") | redis.info("memory")
    except RedisError:  # some managed Redis services refuse INFO; the round trip is what matters
        info = {}
    about = f"{where} answers in {round_trip:.1f} ms (Redis {info.get('redis_version', '?')})"
    policy = info.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        return warn("redis", f"{about}, but maxmemory-policy is {policy}: under memory pressure Redis drops queued jobs",
                    "set maxmemory-policy noeviction")
    return ok("redis", about)


def _redis_address(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def check_queues(rt: Runtime) -> list[Result]:
    """Each queue a job can land on (the default one, each enabled backend's) and the workers serving it."""
    with rt.session() as session:
        backends = session.scalars(select(Backend).where(Backend.enabled.is_(True)).order_by(Backend.name))
        queues = [DEFAULT_QUEUE] + [backend.queue_name for backend in backends]
    workers = Worker.all(connection=rt.redis)
    results = []
    for queue in queues:
        serving = sum(1 for worker in workers if queue in worker.queue_names())
        waiting = Queue(queue, connection=rt.redis).count
        jobs = f"{waiting} job{'s' if waiting != 1 else ''} waiting"
        if serving:
            workers_serve = "1 worker serves it" if serving == 1 else f"{serving} workers serve it"
            results.append(ok(f"queue {queue}", f"{workers_serve}; {jobs}"))
        else:
            results.append(warn(f"queue {queue}", f"no worker serves it; {jobs}",
                                "start `labdesk worker` (it serves the queues that exist when it starts: restart workers after adding a backend)"))
    return results


def check_scheduler(redis: Redis) -> Result:
    """rq's cron scheduler (`labdesk scheduler`) heartbeats into a registry; a silent one is gone."""
    since = time.time() - DEFAULT_CRON_SCHEDULER_TTL
    names = [n.decode() if isinstance(n, bytes) else n for n in redis.zrangebyscore(cron_registry_key(), since, "+inf")]
    if not names:
        return warn("scheduler", "no `labdesk scheduler` is running: idle labs are not suspended, stuck ones not recovered, grades not retried",
                    "start one `labdesk scheduler`")
    return ok("scheduler", f"running ({', '.join(names)})")


# -- backends -------------------------------------------------------------------------------------------
def check_backends(rt: Runtime, timeout: float) -> list[Result]:
    """Each enabled backend's own health check (`available()`), each with its own timeout; disabled ones skipped."""
    with rt.session() as session:
        backends = list(session.scalars(select(Backend).order_by(Backend.name)))
        session.expunge_all()
    if not backends:
        return [warn("backends", "none registered: no lab can start", "register one: `labdesk backends add NAME --kind KIND`")]
    checks = [
        Check(f"backend {backend.name}", _health(rt, backend), timeout,
              if_slow=f"the {backend.kind} backend does not answer: check its API and credentials (`labdesk backends edit`)")
        for backend in backends if backend.enabled
    ]
    results = {r.check: r for r in run_checks(checks)}
    return [results.get(f"backend {b.name}") or skip(f"backend {b.name}", "disabled") for b in backends]


def _health(rt: Runtime, backend: Backend) -> Callable[[], Result]:
    """The call the scheduled health sweep makes (broker.schedule.check_backend), without recording it."""
    name = f"backend {backend.name}"

    def run() -> Result:
        try:
            answers = bool(rt.connector(backend).available())
        except Exception as exc:  # noqa: BLE001 - whatever the connector raises, the backend did not answer
            return fail(name, f"the {backend.kind} backend's health check raised: {first_line(exc)}",
                        "check its settings and credentials (`labdesk backends edit`)")
        if not answers:
            return fail(name, f"the {backend.kind} backend says it is not available",
                        "check the backend's service, or disable it (`labdesk backends disable`)")
        draining = "; draining: starts no new labs" if backend.draining else ""
        return ok(name, f"{backend.kind}: available{draining}")

    return run


# -- guacd ----------------------------------------------------------------------------------------------
GuacdProbe = Callable[[str, float], bool]


def guacd_checks(context: Context, answers: GuacdProbe) -> list[Check]:
    """One check per guacd host; `answers` is the tunnel's protocol probe (a `select`, expecting `args`)."""
    return [
        # The probe has `timeout` for the protocol itself; the check's own bound leaves it time to say so.
        Check(f"guacd {host}", lambda host=host: check_guacd(host, answers, context.timeout, _tunnel_report(context, host)),
              2 * context.timeout + 1, if_slow="guacd accepts connections but does not answer: restart it")
        for host in context.settings.guacd_hosts
    ]


def _tunnel_report(context: Context, host: str) -> guacd_status.GuacdStatus | None:
    """What the tunnel processes last found about this guacd (nothing when Redis failed)."""
    if "redis" in context.failed:
        return None
    try:
        statuses, _ = guacd_status.guacd_status(context.rt.redis, (host,), context.settings.guacd_check_interval)
    except RedisError:
        return None
    return statuses[0]


def check_guacd(host: str, answers: GuacdProbe, timeout: float, report: guacd_status.GuacdStatus | None = None) -> Result:
    """Reachable, speaking the Guacamole protocol, and reached by the tunnel processes too."""
    name = f"guacd {host}"
    address, _, port = host.rpartition(":")
    try:
        socket.create_connection((address.strip("[]"), int(port)), timeout).close()
    except OSError as exc:
        return fail(name, f"not reachable: {exc.strerror or exc or 'no answer'}", "start guacd there, or fix guacd_hosts")
    if not answers(host, timeout):
        return fail(name, "accepts connections but does not speak the Guacamole protocol (no `args` in answer to `select`)",
                    "make guacd_hosts name guacd's port (4822), or restart guacd")
    if report is None or report.reporting == 0:
        return ok(name, "answers the Guacamole protocol; no tunnel process has reported on it")
    tunnels = f"{report.up_in} of {report.reporting} tunnel processes reach it, {report.sessions} sessions"
    if report.up_in < report.reporting:
        return warn(name, f"answers the Guacamole protocol here, but only {tunnels}",
                    "check the network between the tunnel hosts and guacd")
    return ok(name, f"answers the Guacamole protocol; {tunnels}")


# -- the command ----------------------------------------------------------------------------------------
@click.command("doctor")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds each check may take.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def doctor_command(timeout: float, as_json: bool) -> None:
    """Check configuration, database, Redis, workers, backends, guacd and LTI; exit 1 if any check fails."""
    results = diagnose(timeout)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for result in results:
            click.echo(result.line())
        click.echo(summary(results))
    if any(r.status is Status.FAIL for r in results):
        raise SystemExit(1)


def summary(results: Sequence[Result]) -> str:
    """`2 failed, 1 warning, 9 ok, 0 skipped`: the last line of the report."""
    counts = {status: sum(1 for r in results if r.status is status) for status in Status}
    warnings = "1 warning" if counts[Status.WARN] == 1 else f"{counts[Status.WARN]} warnings"
    return f"{counts[Status.FAIL]} failed, {warnings}, {counts[Status.OK]} ok, {counts[Status.SKIP]} skipped"
