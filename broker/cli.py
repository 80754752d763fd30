"""`labdesk` sub-commands. Plain click (the broker knows no Flask); `app.py` mounts them on the Flask group.

Every command that a script may read has `--json`. Errors print one line, `error: …`, and exit 1.
"""

from __future__ import annotations

import functools
import getpass
import json
import signal
import subprocess
import sys
import time
from typing import Any, Callable, NoReturn

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from broker import backend_registry, migrate, runtime, schedule, services
from broker.errors import LabDeskError
from broker.lifecycle import LabState
from broker.models import Backend, Lab, LabEvent
from broker.registry import connector_class, connector_kinds
from broker.runtime import Runtime


def fails_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LabDesk's own errors, and a database or Redis that cannot be reached (a wrong URL, a server
    down), into a one-line reason and exit status 1: an admin needs the reason, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LabDeskError as exc:
            _fail(str(exc))
        except OperationalError as exc:
            _fail(f"database: {exc.orig or exc}")
        except (RedisConnectionError, RedisTimeoutError) as exc:
            _fail(f"redis: {exc}")

    return wrapper


def _fail(reason: str) -> NoReturn:
    click.echo(f"error: {next(iter(reason.strip().splitlines()), 'failed')}", err=True)
    sys.exit(1)


def emit(data: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else "\n".join(lines(data)))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def rt() -> Runtime:
    return runtime.current()


# -- db -------------------------------------------------------------------------------------------------
@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@fails_cleanly
def db_upgrade() -> None:
    """Apply every migration."""
    migrate.upgrade(rt().settings)
    click.echo("database is up to date")


@db.command("check")
@fails_cleanly
def db_check() -> None:
    """Fail if the models and the migrations disagree."""
    migrate.check(rt().settings)
    click.echo("no drift between models and migrations")


# -- labs -----------------------------------------------------------------------------------------------
@click.group()
def labs() -> None:
    """Inspect and act on labs."""


def lab_dict(lab: Lab) -> dict[str, Any]:
    return {
        "id": lab.id, "state": lab.state, "user": lab.user.subject, "activity": lab.activity.title,
        "backend": lab.backend.name, "progress": lab.progress, "message": lab.message,
        "last_active_at": lab.last_active_at, "idle_deadline": lab.idle_deadline, "deadline": lab.deadline,
    }


@labs.command("list")
@click.option("--state", type=click.Choice([s.value for s in LabState]), help="Only labs in this state.")
@json_option
@fails_cleanly
def labs_list(state: str | None, as_json: bool) -> None:
    """List labs, newest first."""
    with rt().session() as session:
        query = select(Lab).order_by(Lab.id.desc()).limit(1000)
        if state:
            query = query.where(Lab.state == state)
        rows = [lab_dict(lab) for lab in session.scalars(query)]
    emit(rows, as_json, lambda rs: [f"{r['id']:>6}  {r['state']:<12} {r['user']:<20} {r['activity']}" for r in rs])


@labs.command("show")
@click.argument("lab_id", type=int)
@json_option
@fails_cleanly
def labs_show(lab_id: int, as_json: bool) -> None:
    """One lab with its event history."""
    with rt().session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None:
            raise services.NotFound(f"no lab {lab_id}")
        data = lab_dict(lab)
        events = session.scalars(select(LabEvent).where(LabEvent.lab_id == lab_id).order_by(LabEvent.id))
        data["events"] = [
            {"at": e.at, "from": e.from_state, "to": e.to_state, "reason": e.reason, "actor": e.actor, "job": e.job_id}
            for e in events
        ]
    emit(data, as_json, lambda d: [f"{k}: {v}" for k, v in d.items() if k != "events"]
         + [f"  {e['at']} {e['from'] or '-'} -> {e['to']} ({e['actor']}: {e['reason']})" for e in d["events"]])


def _lab_action(target: LabState, verb: str) -> Callable[..., None]:
    @click.argument("lab_id", type=int)
    @fails_cleanly
    def action(lab_id: int) -> None:
        lab = services.request_state(rt(), lab_id, target, actor="cli", reason=f"{verb} from the command line")
        click.echo(f"lab {lab.id} is now {lab.state}")

    action.__doc__ = f"{verb.capitalize()} a lab."
    return action


labs.command("suspend")(_lab_action(LabState.SUSPENDING, "suspend"))
labs.command("resume")(_lab_action(LabState.RESUMING, "resume"))
labs.command("delete")(_lab_action(LabState.DELETING, "delete"))


# -- backends -------------------------------------------------------------------------------------------
@click.group()
def backends() -> None:
    """Register and check connector backends."""


@backends.command("add")
@click.argument("name")
@click.option("--kind", required=True, help="Connector kind (entry point name), e.g. local, heat, libvirt.")
@click.option("--config", "config_json", default="{}", help="Non-secret settings as a JSON object.")
@click.option("--secret", "secret_pairs", multiple=True, help="KEY=VALUE credential, stored encrypted.")
@click.option("--if-missing", is_flag=True, help="Do nothing when a backend of that name exists.")
@fails_cleanly
def backends_add(name: str, kind: str, config_json: str, secret_pairs: tuple[str, ...], if_missing: bool) -> None:
    """Register a backend (validated by building its connector; secrets sealed; see broker.backend_registry)."""
    connector_class(kind)
    try:
        config = backend_registry.parse_config(config_json)
        secrets = backend_registry.parse_secrets(secret_pairs)
    except backend_registry.InvalidBackendInput as exc:
        raise click.BadParameter(str(exc), param_hint="--config" if exc.field == "config" else "--secret") from None
    try:
        backend_registry.register(rt(), name, kind, config, secrets, actor=cli_actor())
    except backend_registry.BackendExists:
        if not if_missing:
            raise
        click.echo(f"backend {name} exists")
        return
    click.echo(f"backend {name} ({kind}) registered")


def cli_actor() -> str:
    """Who ran the command, as the audit log names them."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@backends.command("list")
@json_option
@fails_cleanly
def backends_list(as_json: bool) -> None:
    """List backends (credentials are never shown)."""
    with rt().session() as session:
        rows = [
            {"name": b.name, "kind": b.kind, "enabled": b.enabled, "queue": b.queue_name, "config": b.config,
             "has_secrets": b.secrets is not None}
            for b in session.scalars(select(Backend).order_by(Backend.name))
        ]
    emit(rows, as_json, lambda rs: [f"{r['name']:<20} {r['kind']:<10} {'on' if r['enabled'] else 'off'}" for r in rs])


@backends.command("check")
@click.argument("name", required=False)
@json_option
@fails_cleanly
def backends_check(name: str | None, as_json: bool) -> None:
    """Ask each backend (or NAME) whether it answers; exit 1 if any does not."""
    with rt().session() as session:
        query = select(Backend).order_by(Backend.name)
        found = session.scalars(query.where(Backend.name == name) if name else query).all()
        if name and not found:
            raise LabDeskError(f"no backend named '{name}'")
        results = {b.name: schedule.check_backend(rt(), b.id) for b in found}
    emit(results, as_json, lambda rs: [f"{n:<20} {'available' if ok else 'UNAVAILABLE'}" for n, ok in rs.items()])
    if not all(results.values()):
        sys.exit(1)


# -- sweeps ---------------------------------------------------------------------------------------------
@click.group()
def sweep() -> None:
    """Run a periodic sweep once, now."""


def _sweep_command(label: str, run: Callable[[Runtime], Any]) -> Callable[..., None]:
    @json_option
    @fails_cleanly
    def command(as_json: bool) -> None:
        result = run(rt())
        emit({label: result}, as_json, lambda d: [f"{label}: {result}"])

    return command


def _reconcile_now(r: Runtime) -> dict[str, dict[str, int]]:
    with r.session() as session:
        ids = {b.name: b.id for b in session.scalars(select(Backend).where(Backend.enabled.is_(True)))}
    return {name: schedule.reconcile_backend(r, bid) for name, bid in ids.items()}


def _limits_sweep(r: Runtime) -> int:
    from broker import usage_limits

    return usage_limits.sweep(r)


def _class_sweep(r: Runtime) -> dict[str, int]:
    from broker import class_schedule

    return {"pre-warmed": class_schedule.prewarm_due(r), "let go": class_schedule.release_unused(r)}


def _gpu_sweep(r: Runtime) -> int:
    from broker import gpu_queue

    return gpu_queue.sweep(r)


sweep.command("suspend", help="Suspend idle labs.")(_sweep_command("suspended", schedule.suspend_idle))
sweep.command("reap", help="Delete labs unused too long.")(_sweep_command("deleting", schedule.reap))
sweep.command("expire", help="Recover or fail labs past their deadline.")(_sweep_command("expired", schedule.expire_stuck))
sweep.command("reconcile", help="Compare backends with the database.")(_sweep_command("reconciled", _reconcile_now))
sweep.command("gpus", help="Free GPUs that ended labs hold; start who is next.")(_sweep_command("granted", _gpu_sweep))
sweep.command("limits", help="Suspend labs whose learner used up their weekly hours.")(_sweep_command("suspended", _limits_sweep))
sweep.command("classes", help="Pre-warm labs of class sessions due; let go of unused ones.")(_sweep_command("classes", _class_sweep))


# -- processes ------------------------------------------------------------------------------------------
def all_queues(r: Runtime) -> list[str]:
    from broker.dispatch import DEFAULT_QUEUE

    with r.session() as session:
        return [DEFAULT_QUEUE] + [b.queue_name for b in session.scalars(select(Backend).order_by(Backend.id))]


@click.command()
@click.option("--queue", "queues", multiple=True, help="Queue to serve (default: all).")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@fails_cleanly
def worker(queues: tuple[str, ...], burst: bool) -> None:
    """Run an rq worker (with its scheduler, which runs retries and polls)."""
    from broker.rq_workers import LabDeskWorker

    names = list(queues) or all_queues(rt())
    _preload_job_code()
    # Maintenance every 30 s (rq's default is 10 min): a surviving worker then takes over the scheduler
    # lock of a crashed one within about two minutes, so polls and retries do not stall for long.
    LabDeskWorker(names, connection=rt().redis, maintenance_interval=30).work(with_scheduler=True, burst=burst)


def _preload_job_code() -> None:
    """Import what jobs run before rq forks a work-horse per job; otherwise every job, each poll
    included, imports the connectors and their SDKs afresh (0.15 CPU-s of a 0.26 CPU-s Heat job,
    bench/heat.py)."""
    import broker.jobs  # noqa: F401

    connector_kinds()  # loading the entry points imports each connector (and its SDK)
    schedule.periodic_jobs()


@click.command()
@fails_cleanly
def scheduler() -> None:
    """Run the cron scheduler that enqueues the periodic sweeps."""
    from rq.cron import CronScheduler

    from broker.rq_workers import OUTAGE_RETRY

    rt().redis.set_retry(OUTAGE_RETRY)  # rides out a Redis restart, as workers do (docs/faults.md)
    cron = CronScheduler(connection=rt().redis)
    schedule.register_cron(cron, rt().settings)
    cron.start()


@click.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True, help="rq worker processes.")
@fails_cleanly
def run_all(host: str, port: int, workers: int) -> None:
    """Development: web, tunnel, workers and scheduler together, until Ctrl-C."""
    migrate.upgrade(rt().settings)
    me = [sys.executable, "-m", "app"]
    children = [subprocess.Popen(me + ["worker"]) for _ in range(workers)]
    children.append(subprocess.Popen(me + ["scheduler"]))
    children.append(subprocess.Popen(me + ["tunnel"]))
    children.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "-b", f"{host}:{port}", "-w", "2",
                                      "-k", "gthread", "--threads", "8", "app:create_app()"]))
    click.echo(f"LabDesk is running at http://{host}:{port}/  (Ctrl-C stops it)")
    click.echo(f"Desktop tunnel on {rt().settings.tunnel_listen}, relaying to guacd at {', '.join(rt().settings.guacd_hosts)}")
    if rt().settings.emulator:
        click.echo(f"Built-in LMS emulator: http://{host}:{port}/emulator/  (launch as a learner or an instructor)")
    _wait_then_stop(children)


def _wait_then_stop(children: list[subprocess.Popen[bytes]]) -> None:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait(timeout=20)


@click.group()
def demo() -> None:
    """Demonstration data."""


@demo.command("seed")
@fails_cleanly
def demo_seed() -> None:
    """Add a local backend, a desktop image, a course and an activity, unless they exist."""
    from broker.demo import seed

    click.echo(seed(rt()))


from broker.cli_images import images_group  # noqa: E402  (built on the helpers above)
from broker.cli_gpus import gpus_group, watch  # noqa: E402
from broker.cli_boxes import boxes_group  # noqa: E402
from broker.cli_admins import admins_group  # noqa: E402
from broker.doctor import doctor_command  # noqa: E402
import broker.cli_backend_ops  # noqa: E402,F401  (adds edit|enable|disable|remove|drain|undrain|capacity|price|status to `backends`)

COMMANDS = [db, labs, backends, sweep, worker, scheduler, run_all, demo, images_group, gpus_group, watch, boxes_group, admins_group,
            doctor_command]
