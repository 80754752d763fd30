"""What the Redis and PostgreSQL restart tests share: the web as deployed (one gunicorn process, found again
by its PID after the fault), learners on it, a learner's open lab page sending keepalives in the background
(every answer kept with its time, for the figures), and the issue's invariants after a fault.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import requests
from sqlalchemy import select

from broker import schedule
from broker.clock import utcnow
from broker.config import Settings
from broker.lifecycle import IN_PROGRESS, LabState
from broker.models import Backend, Lab, LabEvent
from broker.runtime import Runtime
from tests.support.http import Learner, free_port
from tests.support.processes import stop_process
from tests.support.waiting import lab_row, wait_until
from tests.support.workers import ROOT, _descendants, settings_env

UNAVAILABLE = "LabDesk is briefly unavailable"
NOTHING_CHANGED = "Nothing was changed."


@dataclass
class Web:
    """One gunicorn master with one gthread worker process, as deploy/compose.yaml runs the web."""

    url: str
    master: subprocess.Popen[bytes]

    def worker_pids(self) -> list[int]:
        return _descendants(self.master.pid)


@contextmanager
def gunicorn_webs(settings: Settings, log_dir: Path, count: int = 1) -> Iterator[list[Web]]:
    """`count` web processes (each a load balancer's backend), started together, stopped by PID."""
    webs: list[Web] = []
    try:
        for index in range(count):
            port = free_port()
            argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                    "--worker-class", "gthread", "--threads", "4", "app:create_app()"]
            with (log_dir / f"gunicorn-{index}.log").open("wb") as out:
                master = subprocess.Popen(argv, cwd=ROOT, env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT)
            webs.append(Web(f"http://127.0.0.1:{port}", master))
        for web in webs:
            wait_until(lambda: web.master.poll() is not None or _answers(web.url), timeout=60, what="gunicorn to answer")
            assert web.master.poll() is None, f"gunicorn exited; see {log_dir}"
        yield webs
    finally:
        for web in webs:
            stop_process(web.master, grace=15)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def signed_in(url: str, name: str) -> Learner:
    person = Learner(url)
    assert person.sign_in(name).status_code == 200
    return person


class Page(threading.Thread):
    """A learner's open lab page: a keepalive every `every` seconds (30 s in production), each answer kept
    as (monotonic time, status, JSON body or None). `paused` holds it, as between two real keepalives."""

    def __init__(self, learner: Learner, lab_id: int, every: float = 0.25) -> None:
        super().__init__(name=f"page-{lab_id}", daemon=True)
        self.http = requests.Session()
        self.http.cookies.update(learner.http.cookies)
        self.url = f"{learner.base_url}/api/labs/{lab_id}/keepalive"
        self.every = every
        self.answers: list[tuple[float, int, Any]] = []
        self.paused = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            if not self.paused.is_set():
                try:
                    answer = self.http.post(self.url, timeout=5)
                    body = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else None
                    self.answers.append((time.monotonic(), answer.status_code, body))
                except requests.RequestException as exc:
                    self.answers.append((time.monotonic(), 0, str(exc)))
            self._done.wait(self.every)

    def close(self) -> None:
        self._done.set()
        self.join(timeout=10)

    def answers_since(self, moment: float) -> list[tuple[float, int]]:
        """(seconds after `moment`, status) of each answer since: what a failure message shows."""
        return [(round(at - moment, 2), status) for at, status, _ in self.answers if at >= moment]

    def refused_span(self) -> tuple[float, float] | None:
        """The monotonic times of the first refused keepalive and of the first accepted one after it."""
        refused = [at for at, status, _ in self.answers if status != 204]
        if not refused:
            return None
        back = [at for at, status, _ in self.answers if status == 204 and at > refused[0]]
        return refused[0], back[0] if back else float("nan")


def script_backend(rt: Runtime, backend_id: int, **config: Any) -> None:
    """Set the fake cloud's behaviour (call_latency, provision_delay …); workers read it per job."""
    with rt.session() as session:
        backend = session.get(Backend, backend_id)
        backend.config = {"state_dir": backend.config["state_dir"], **config}
        session.commit()


def reasons(rt: Runtime, lab_id: int) -> list[str]:
    with rt.session() as session:
        return list(session.scalars(select(LabEvent.reason).where(LabEvent.lab_id == lab_id).order_by(LabEvent.id)))


def drive_to_running(rt: Runtime, lab_ids: list[int], timeout: float = 40) -> None:
    """Run the deadline sweep as the cron would, until every lab has reached running (the sweep re-enqueues
    lost jobs). Reached, not all running at once: a lab whose learner has no page open is suspended as idle
    by the scheduler's sweep seconds after it runs, possibly before the last of the others runs."""

    def all_running() -> bool:
        schedule.expire_stuck(rt)
        with rt.session() as session:
            reached = set(session.scalars(select(LabEvent.lab_id).where(
                LabEvent.lab_id.in_(lab_ids), LabEvent.to_state == LabState.RUNNING.value)))
        return reached == set(lab_ids)

    wait_until(all_running, timeout=timeout, interval=0.5, what=f"labs {lab_ids} to run")


def assert_no_orphans(rt: Runtime, backend_id: int, fake_dir: Path) -> None:
    """After the reconciler has run twice, past the orphan grace: every backend object is a live lab's,
    and every running or suspended lab has its object."""
    schedule.reconcile_backend(rt, backend_id)
    time.sleep(rt.settings.orphan_grace + 0.1)
    schedule.reconcile_backend(rt, backend_id)
    objects = {p.stem for p in fake_dir.glob("labdesk-lab-*.json")}
    with rt.session() as session:
        live = session.scalars(select(Lab.id).where(Lab.state.in_(["running", "suspended", "suspending", "resuming"]))).all()
    assert objects == {f"labdesk-lab-{lab_id}" for lab_id in live}


def assert_none_stuck(rt: Runtime) -> None:
    """After the deadline sweep: no lab in progress past its deadline, every failed lab says why."""
    schedule.expire_stuck(rt)
    now = utcnow()
    with rt.session() as session:
        labs = session.scalars(select(Lab)).all()
    stuck = [(lab.id, lab.state) for lab in labs if LabState(lab.state) in IN_PROGRESS and lab.deadline < now]
    assert stuck == []
    assert all(lab.message for lab in labs if lab.state == LabState.FAILED.value)
