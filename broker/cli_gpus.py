"""`labdesk gpus …` (a backend's GPU units, who holds them, who waits) and `labdesk watch` (backend events).

`gpus refresh` asks the backend for its inventory here and now (as each backend's health check does
every minute). `watch BACKEND` runs the connector's event stream and turns every event into a prompt
look at the lab (`broker.jobs.nudge_lab`); run one per backend whose connector has events (libvirt).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import click
from sqlalchemy import select

from broker import gpu_queue, gpus
from broker.cli import emit, fails_cleanly, json_option, rt
from broker.errors import LabDeskError
from broker.jobs import nudge_request
from broker.models import Backend, GpuSlot


def _backend(session: Any, name: str) -> Backend:
    backend = session.scalar(select(Backend).where(Backend.name == name))
    if backend is None:
        raise LabDeskError(f"no backend named '{name}'")
    return backend


@click.group("gpus")
def gpus_group() -> None:
    """GPU units of the backends and the queue for them."""


@gpus_group.command("list")
@click.argument("backend")
@json_option
@fails_cleanly
def gpus_list(backend: str, as_json: bool) -> None:
    """Each unit of BACKEND with its holder, then the labs waiting, in the order they will be served."""
    with rt().session() as session:
        found = _backend(session, backend)
        slots = session.scalars(select(GpuSlot).where(GpuSlot.backend_id == found.id).order_by(GpuSlot.key)).all()
        order = gpus.current_order(session, rt().settings, found.id)
        data = {
            "units": [{"key": s.key, "host": s.host, "model": s.model, "kind": s.kind, "present": s.present,
                       "lab": s.lab_id} for s in slots],
            "waiting": [{"lab": w.lab_id, "course": w.course_id, "model": w.model or "any",
                         "since": w.requested_at.isoformat(timespec="seconds")} for w in order.served],
            "held_back": [w.lab_id for w in order.blocked],
        }
    emit(data, as_json, _lines)


def _lines(data: dict[str, Any]) -> list[str]:
    width = max((len(u["key"]) for u in data["units"]), default=0)
    units = [f"{u['key']:<{width}}  {u['model']:<16} {u['kind']:<5} "
             f"{'lab ' + str(u['lab']) if u['lab'] else 'free' if u['present'] else 'gone'}" for u in data["units"]]
    waiting = [f"{n}. lab {w['lab']} (course {w['course']}, {w['model']}) since {w['since']}"
               for n, w in enumerate(data["waiting"], 1)]
    held = [f"held back (learner at their limit): labs {', '.join(map(str, data['held_back']))}"] if data["held_back"] else []
    return units + ["waiting:" if waiting else "nobody waiting"] + waiting + held


@gpus_group.command("refresh")
@click.argument("backend")
@fails_cleanly
def gpus_refresh(backend: str) -> None:
    """Ask BACKEND for its GPU units now and record them."""
    with rt().session() as session:
        count = gpu_queue.refresh(rt(), session, _backend(session, backend))
    click.echo(f"{backend}: {count} GPU units")


@click.command("watch")
@click.argument("backend")
@fails_cleanly
def watch(backend: str) -> None:
    """Follow BACKEND's events (libvirt domain lifecycle) and update the labs they concern at once."""
    runtime = rt()
    with runtime.session() as session:
        found = _backend(session, backend)
        connector, queue = runtime.connector(found), found.queue_name
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def notify(lab_id: int) -> None:
        runtime.dispatcher.enqueue(nudge_request(lab_id, queue, int(time.time() * 1000)))

    click.echo(f"watching {backend}")
    try:
        connector.watch(notify, stop)
    except KeyboardInterrupt:
        stop.set()



