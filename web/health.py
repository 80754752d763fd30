"""/healthz for load balancers and admins, /metrics for Prometheus."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rq import Queue
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select, text

from broker.dispatch import DEFAULT_QUEUE
from broker.models import Backend, Lab
from broker.schedule import DURATIONS_KEY, HEALTH_KEY
from web.context import rt

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """Database and Redis are required (503 without them); backends are reported as their workers last saw them."""
    report = {"database": _probe(_database_ok), "redis": _probe(lambda: bool(rt().redis.ping()))}
    ready = report["database"] == "ok" and report["redis"] == "ok"
    report["backends"] = _backend_health() if ready else {}  # it reads both; with either down it would raise
    degraded = any(b["status"] != "ok" for b in report["backends"].values())
    report["status"] = "down" if not ready else "degraded" if degraded else "ok"
    return jsonify(report), 200 if ready else 503


def _database_ok() -> bool:
    with rt().session() as session:
        return session.execute(text("SELECT 1")).scalar() == 1


def _probe(check) -> str:  # type: ignore[no-untyped-def]
    try:
        return "ok" if check() else "failing"
    except Exception as exc:  # noqa: BLE001 - a health probe reports, it never raises
        return f"failing: {type(exc).__name__}"


def _backend_health() -> dict[str, dict[str, object]]:
    stale_after = 3 * rt().settings.health_interval
    seen = {k.decode(): json.loads(v) for k, v in rt().redis.hgetall(HEALTH_KEY).items()}
    with rt().session() as session:
        names = session.scalars(select(Backend.name).where(Backend.enabled.is_(True))).all()
    report = {}
    for name in names:
        entry = seen.get(name)
        if entry is None:
            report[name] = {"status": "unknown", "checked_seconds_ago": None}
            continue
        age = round(time.time() - entry["at"], 1)
        status = "stale" if age > stale_after else "ok" if entry["ok"] else "unavailable"
        report[name] = {"status": status, "checked_seconds_ago": age}
    return report


@health.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry()
    registry.register(_Collector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")


class _Collector:
    """Reads the numbers at scrape time: labs by state, queue depths, failed jobs, sweep durations."""

    def collect(self):  # type: ignore[no-untyped-def]
        labs = GaugeMetricFamily("labdesk_labs", "Labs by state", labels=["state"])
        with rt().session() as session:
            for state, count in session.execute(select(Lab.state, func.count()).group_by(Lab.state)):
                labs.add_metric([state], count)
            queues = [DEFAULT_QUEUE] + [b.queue_name for b in session.scalars(select(Backend)).all()]
        queued = GaugeMetricFamily("labdesk_jobs_queued", "Jobs waiting per queue", labels=["queue"])
        failed = GaugeMetricFamily("labdesk_jobs_failed", "Failed jobs kept per queue", labels=["queue"])
        for name in queues:
            queue = Queue(name, connection=rt().redis)
            queued.add_metric([name], queue.count)
            failed.add_metric([name], FailedJobRegistry(queue=queue).count)
        sweeps = GaugeMetricFamily("labdesk_sweep_duration_seconds", "Duration of the last run of each sweep", labels=["sweep"])
        for name, seconds in rt().redis.hgetall(DURATIONS_KEY).items():
            sweeps.add_metric([name.decode()], float(seconds))
        yield from (labs, queued, failed, sweeps)
