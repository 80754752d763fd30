"""/healthz and /metrics over real HTTP: what a load balancer, an admin and Prometheus read."""

from __future__ import annotations

import json
import time

import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from broker import schedule, services
from broker.dispatch import DEFAULT_QUEUE, JobRequest
from broker.jobs import advance_lab
from broker.models import Backend, Lab
from broker.runtime import Runtime
from tests.support.http import LiveServer
from tests.support.inline import run_queued_jobs
from tests.support.world import World, add_learner


def add_backend(rt: Runtime, name: str, **config: object) -> int:
    with rt.session() as session:
        backend = Backend(name=name, kind="fake", config=config)
        session.add(backend)
        session.commit()
        return backend.id


def add_lab(rt: Runtime, world: World, state: str, learner: str) -> int:
    with rt.session() as session:
        lab = Lab(user_id=add_learner(rt, learner), activity_id=world.activity_id, backend_id=world.backend_id, state=state)
        session.add(lab)
        session.commit()
        return lab.id


def scrape(server: LiveServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every metric family as {labels: value}, parsed by Prometheus' own parser (so the text is valid)."""
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        family.name: {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples}
        for family in text_string_to_metric_families(response.text)
    }


def test_healthz_reports_each_backend_as_its_last_check_saw_it(rt: Runtime, world: World, server: LiveServer) -> None:
    broken = add_backend(rt, "broken", down=True)
    add_backend(rt, "never-checked")
    stale = add_backend(rt, "stale")
    assert schedule.check_backend(rt, world.backend_id) is True
    assert schedule.check_backend(rt, broken) is False
    assert schedule.check_backend(rt, stale) is True
    long_ago = time.time() - 3 * rt.settings.health_interval - 5
    rt.redis.hset(schedule.HEALTH_KEY, "stale", json.dumps({"ok": True, "at": long_ago}))

    response = requests.get(f"{server.url}/healthz", timeout=10)
    assert response.status_code == 200  # backends degrade the report; only the database and Redis fail it
    report = response.json()
    assert (report["database"], report["redis"], report["status"]) == ("ok", "ok", "degraded")
    statuses = {name: entry["status"] for name, entry in report["backends"].items()}
    assert statuses == {"fake": "ok", "broken": "unavailable", "never-checked": "unknown", "stale": "stale"}
    assert report["backends"]["never-checked"]["checked_seconds_ago"] is None
    assert 0 <= report["backends"]["fake"]["checked_seconds_ago"] < 5


def test_healthz_is_ok_when_every_backend_answered(rt: Runtime, world: World, server: LiveServer) -> None:
    assert schedule.check_backend(rt, world.backend_id)
    response = requests.get(f"{server.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_metrics_count_labs_by_state_queue_depths_failed_jobs_and_sweep_durations(
    rt: Runtime, world: World, server: LiveServer
) -> None:
    for n, state in enumerate(["running", "running", "suspended", "failed", "deleted"]):
        add_lab(rt, world, state, f"learner-{state}-{n}")
    queue = "labdesk-backend-fake"
    rt.dispatcher.enqueue(JobRequest(queue, "broken-job", advance_lab, (1, "no-such-state")))
    run_queued_jobs(rt)  # the broken job fails and is kept for an admin
    services.launch(rt, world.user_id, world.activity_id, actor="test")  # its job waits: no worker runs
    assert schedule.suspend_idle_job() == 0

    metrics = scrape(server)
    with rt.session() as session:
        in_db = dict(session.execute(select(Lab.state, func.count()).group_by(Lab.state)).all())
    assert in_db == {"running": 2, "suspended": 1, "failed": 1, "deleted": 1, "requested": 1}
    assert {labels[0][1]: value for labels, value in metrics["labdesk_labs"].items()} == in_db
    assert metrics["labdesk_labs"][(("state", "running"),)] == 2
    assert metrics["labdesk_jobs_queued"] == {(("queue", DEFAULT_QUEUE),): 0, (("queue", queue),): 1}
    assert metrics["labdesk_jobs_failed"] == {(("queue", DEFAULT_QUEUE),): 0, (("queue", queue),): 1}
    durations = metrics["labdesk_sweep_duration_seconds"]
    assert list(durations) == [(("sweep", "suspend"),)]
    assert 0 <= durations[(("sweep", "suspend"),)] < 5
