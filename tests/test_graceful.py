"""Graceful operations (docs/deploy.md, "Graceful operations"): restarting a process costs no lab, no job
and no request.

Workers: a real `labdesk worker` told SIGTERM inside a slow backend call finishes that job, takes no other
and exits 0; one stopped harder (a second SIGTERM, or SIGKILL) while a lab suspends leaves a lab the
deadline sweep recovers without a second `suspend` reaching the backend, and rq's registries keep no job
that looks as if it still ran. Web: gunicorn on the deploy's own command line reloads its workers on SIGHUP
with no failed request, and on SIGTERM answers the request in flight, then exits and frees its port.
Tunnel: a `labdesk tunnel` told SIGTERM with sessions open says `disconnect` to guacd for each and exits
at once, while a second tunnel on the same port (SO_REUSEPORT) takes the new connections.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from broker import failed_jobs, schedule, services
from broker.config import Settings
from broker.dispatch import JOB_TIMEOUT
from broker.lifecycle import LabState
from broker.models import Backend
from broker.runtime import Runtime
from broker.testing.fake import read_call_log
from broker.tunnel_tokens import Grant, TokenMinter
from tests.conftest import make_settings
from tests.support.fake_labs import running_lab
from tests.support.guacd_double import GuacdDouble, guacd_doubles
from tests.support.http import Learner, free_port
from tests.support.inline import run_queued_jobs
from tests.support.processes import stop_process
from tests.support.tunnel import TunnelProcess
from tests.support.tunnel_client import TunnelClient
from tests.support.waiting import lab_row, wait_state, wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner
from tests.test_deploy_artefacts import BIN, compose, deploy_env, start  # noqa: F401  (deploy_env: a fixture)
from tests.test_recovery import script_backend

S = LabState
LATENCY = 3.0  # seconds every call to the fake backend blocks, like a slow cloud API


# -- workers ----------------------------------------------------------------------------------------------
@pytest.fixture
def guacd() -> Iterator[GuacdDouble]:
    with guacd_doubles() as start_double:
        yield start_double(sync_interval=0.2)


@pytest.fixture
def settings(pg_only: str, tmp_path: Path, redis_client: Any, guacd: GuacdDouble) -> Settings:
    return make_settings(pg_only, tmp_path, suspending_deadline=2, guacd_hosts=(f"127.0.0.1:{guacd.address[1]}",),
                         guacd_check_interval=1)


def queue_name(rt: Runtime, world: World) -> str:
    with rt.session() as session:
        return session.get(Backend, world.backend_id).queue_name


def suspend(rt: Runtime, lab_id: int) -> None:
    services.request_state(rt, lab_id, S.SUSPENDING, "learner-1", "learner left")


def suspends(fake_dir: Path, lab_id: int) -> int:
    """`suspend` calls that reached the backend for this lab (the fake's call log)."""
    return sum(1 for op, lab, _, _ in read_call_log(fake_dir) if (op, lab) == ("suspend", lab_id))


def started(rt: Runtime, queue: str) -> list[str]:
    return StartedJobRegistry(queue, connection=rt.redis).get_job_ids()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_told_sigterm_mid_call_finishes_its_job_takes_no_other_and_exits_0(
    rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path
) -> None:
    queue = queue_name(rt, world)
    first = running_lab(rt, world, fake_dir)
    second = running_lab(rt, world, fake_dir, user_id=add_learner(rt, "learner-2"))
    script_backend(rt, world, call_latency=LATENCY)
    [worker] = workers.start()
    suspend(rt, first)
    wait_until(lambda: started(rt, queue), timeout=30, what="the worker to take the suspend job")

    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)  # inside the slow `suspend` call: rq's warm shutdown
    suspend(rt, second)  # queued after the signal: the stopping worker must leave it
    code = worker.wait(timeout=JOB_TIMEOUT)
    print(f"\nworker exited {time.monotonic() - signalled:.1f} s after SIGTERM (its job had up to "
          f"{2 * LATENCY:.0f} s of backend calls left)")

    assert code == 0
    assert lab_row(rt, first).state == "suspended" and suspends(fake_dir, first) == 1
    assert lab_row(rt, second).state == "suspending" and suspends(fake_dir, second) == 0
    [waiting] = Queue(queue, connection=rt.redis).get_job_ids()
    assert waiting.startswith(f"lab-{second}-suspending-")
    assert started(rt, queue) == []


def stop_hard(worker: subprocess.Popen[bytes], pool: WorkerPool, how: str) -> None:
    """A second SIGTERM (rq's cold shutdown: it SIGKILLs the work-horse), or SIGKILL for the whole tree."""
    if how == "sigkill":
        pool.kill(worker)
        return
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.2)  # rq takes a second signal within a second of the first for a duplicate
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("how", ["second-sigterm", "sigkill"])
def test_a_worker_stopped_hard_mid_suspend_leaves_a_lab_recovered_without_a_second_suspend(
    rt: Runtime, world: World, workers: WorkerPool, fake_dir: Path, how: str
) -> None:
    queue = queue_name(rt, world)
    lab_id = running_lab(rt, world, fake_dir)
    script_backend(rt, world, call_latency=LATENCY)
    [worker] = workers.start()
    suspend(rt, lab_id)
    # The backend took the suspend and the job recorded it; it is now inside the slow `observe`.
    wait_until(lambda: lab_row(rt, lab_id).backend_call == "suspend", timeout=30, what="the suspend call")
    [abandoned] = started(rt, queue)

    stop_hard(worker, workers, how)

    assert lab_row(rt, lab_id).state == "suspending" and suspends(fake_dir, lab_id) == 1
    assert started(rt, queue) == [abandoned]  # rq still counts it as running: its worker never said otherwise
    script_backend(rt, world)  # the cloud answers quickly again
    wait_until(lambda: schedule.expire_stuck(rt) == 1, timeout=10, what="the deadline sweep to re-run the lab")
    workers.start()
    recovered = wait_state(rt, lab_id, S.SUSPENDED, timeout=30)
    assert recovered.recoveries == 1
    assert suspends(fake_dir, lab_id) == 1, "the re-run observed the backend instead of suspending again"

    # rq's cleanup (which a live worker runs every 30 s) once the dead execution's heartbeat has lapsed.
    StartedJobRegistry(queue, connection=rt.redis).cleanup(time.time() + JOB_TIMEOUT + 60)
    assert started(rt, queue) == []
    assert FailedJobRegistry(queue, connection=rt.redis).get_job_ids() == [abandoned]
    [shown] = failed_jobs.failed_jobs(rt)  # what the admin's failed-jobs page lists
    assert (shown.job_id, shown.lab_id) == (abandoned, lab_id)
    assert "AbandonedJobError" in shown.reason

    failed_jobs.retry(rt, abandoned, "admin@example.edu")  # the page's Retry: the stale job does nothing
    wait_until(lambda: not Job.exists(abandoned, connection=rt.redis), timeout=30, what="the retried job to run")
    assert lab_row(rt, lab_id).state == "suspended" and suspends(fake_dir, lab_id) == 1
    assert FailedJobRegistry(queue, connection=rt.redis).get_job_ids() == []


# -- web (gunicorn as deployed) ---------------------------------------------------------------------------
class Gunicorn:
    """gunicorn on compose's command line (only the bind address moved to a free loopback port), with a
    learner signed in and a lab launched (no worker runs: the lab stays queued, its page still answers)."""

    def __init__(self, env: dict[str, str], log: Path, activity_id: int) -> None:
        port = free_port()
        argv = [f"127.0.0.1:{port}" if a == "0.0.0.0:8000" else a for a in compose()["services"]["web"]["command"]]
        assert f"127.0.0.1:{port}" in argv
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = log
        # The development login signs the learner in; public_url is where this test reaches it (plain
        # http on loopback, so the session cookie is not Secure-only).
        env = {**env, "LABDESK_DEV_LOGIN": "true", "LABDESK_PUBLIC_URL": self.url}
        self.process = start([str(BIN / argv[0]), *argv[1:]], env, log)
        wait_until(lambda: self.process.poll() is not None or _answers(self.url), timeout=90, what="gunicorn to answer")
        assert self.process.poll() is None, log.read_text()
        learner = Learner(self.url)
        learner.sign_in("Ada")
        self.lab_id = learner.lab_id(learner.launch(activity_id))
        self.cookie = learner.http.cookies["session"]

    def workers(self) -> set[int]:
        return {int(pid) for task in Path(f"/proc/{self.process.pid}/task").glob("*")
                for pid in (task / "children").read_text().split()}

    def requests_of_a_learner(self) -> tuple[list[tuple[str, str, int]], dict[str, str]]:
        """What an open lab page sends (the page, a keepalive, the status poll) and a probe's /healthz, with
        the answer each should get. Each goes on a fresh connection: a proxy retries an idempotent request
        whose kept-alive upstream connection closed under it; this counts what gunicorn itself answers."""
        calls = [("GET", f"/labs/{self.lab_id}", 200), ("POST", f"/api/labs/{self.lab_id}/keepalive", 204),
                 ("GET", f"/api/labs/{self.lab_id}", 200), ("GET", "/healthz", 200)]
        return calls, {"Cookie": f"session={self.cookie}"}


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:  # refused, or accepted while the workers still boot
        return False


class Traffic:
    """Learners' requests in a loop on a thread until stopped; every answer other than the expected
    status, and every connection error, is kept."""

    def __init__(self, web: Gunicorn) -> None:
        self.web = web
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        calls, headers = self.web.requests_of_a_learner()
        while not self._stop.is_set():
            for method, path, expected in calls:
                try:
                    answer = requests.request(method, self.web.url + path, headers=headers, timeout=30)
                    if answer.status_code != expected:
                        self.failures.append(f"{method} {path}: {answer.status_code}")
                except requests.RequestException as exc:
                    self.failures.append(f"{method} {path}: {exc}")
                self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture
def web(deploy_env: dict[str, str], world: World, tmp_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(deploy_env, tmp_path / "gunicorn.log", world.activity_id)
    try:
        yield server
    finally:
        stop_process(server.process, grace=40)


class SlowClient:
    """A learner's sign-in form posted slowly: headers and part of the body now, the rest on `finish`, on a
    connection that already belongs to a gunicorn worker (it served a request and was kept alive)."""

    def __init__(self, web: Gunicorn) -> None:
        visitor = Learner(web.url)
        self.body = urlencode({"name": "Grace", "csrf_token": visitor.csrf_token()}).encode()
        self.connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=60)
        self.connection.request("GET", "/healthz")
        assert self.connection.getresponse().read() and self.connection.sock is not None
        self.connection.putrequest("POST", "/dev/login")
        self.connection.putheader("Cookie", f"session={visitor.http.cookies['session']}")
        self.connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        self.connection.putheader("Content-Length", str(len(self.body)))
        self.connection.endheaders()
        self.connection.send(self.body[:10])

    def finish(self) -> http.client.HTTPResponse:
        self.connection.send(self.body[10:])
        return self.connection.getresponse()


def signed_in(answer: http.client.HTTPResponse) -> bool:
    return answer.status in (302, 303) and "session=" in (answer.getheader("Set-Cookie") or "")


@pytest.mark.postgres
@pytest.mark.slow
def test_gunicorn_reloads_its_workers_on_sighup_without_a_failed_request(web: Gunicorn) -> None:
    """Learners' requests in a loop, and a slow client's form half sent, while SIGHUP replaces both workers:
    every request gets its answer, the slow one from the old worker that waited for it."""
    before = web.workers()
    assert len(before) == 2  # WEB_CONCURRENCY
    traffic = [Traffic(web) for _ in range(3)]
    wait_until(lambda: sum(t.sent for t in traffic) >= 30, timeout=30, what="traffic before the reload")
    slow = SlowClient(web)

    web.process.send_signal(signal.SIGHUP)
    wait_until(lambda: len(web.workers() - before) == 2, timeout=60, what="two new workers")
    time.sleep(1)  # the client is slow
    assert signed_in(slow.finish())
    wait_until(lambda: not web.workers() & before, timeout=60, what="the old workers to be gone")
    at_reload = sum(t.sent for t in traffic)
    wait_until(lambda: sum(t.sent for t in traffic) >= at_reload + 30, timeout=30, what="traffic after the reload")
    for loop in traffic:
        loop.stop()

    assert [failure for loop in traffic for failure in loop.failures] == []
    assert web.process.poll() is None and len(web.workers()) == 2
    print(f"\nSIGHUP: {sum(t.sent for t in traffic)} requests, none failed, while both workers were replaced")


@pytest.mark.postgres
@pytest.mark.slow
def test_gunicorn_on_sigterm_finishes_the_request_in_flight_and_lets_go_of_its_port_once_drained(web: Gunicorn) -> None:
    """A slow client's form is half sent when SIGTERM comes: it is still answered. Until then the draining
    workers keep the port bound (a new connection would wait in the backlog, unanswered, and be reset at
    the end: why a Service or proxy must stop routing here first, docs/deploy.md); once the last worker is
    done the master exits 0 and the port refuses connections."""
    slow = SlowClient(web)

    web.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "Handling signal: term" in web.log.read_text(), timeout=10, what="gunicorn to take the signal")
    assert not _refused(web.port), "the draining worker still holds the port"
    time.sleep(1)  # the client is slow
    answer = slow.finish()
    answered = time.monotonic()

    assert signed_in(answer)
    assert web.process.wait(timeout=40) == 0  # within --graceful-timeout 30 (and the unit's TimeoutStopSec)
    print(f"\ngunicorn exited {time.monotonic() - answered:.2f} s after answering the request in flight")
    assert _refused(web.port)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# -- tunnel -----------------------------------------------------------------------------------------------
def desktop_sessions(guacd: GuacdDouble) -> list[Any]:
    """Sessions that reached the desktop (the tunnels' health checks stop at `select`)."""
    return [record for record in guacd.connections if record.ready]


def close_code(client: TunnelClient) -> int | None:
    """Read until the tunnel closes the socket; the close code it sent."""
    try:
        while True:
            client.ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


@pytest.mark.postgres
@pytest.mark.slow
def test_a_tunnel_told_sigterm_disconnects_every_session_from_guacd_and_exits_while_its_successor_serves(
    rt: Runtime, world: World, guacd: GuacdDouble, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    learners = [world.user_id, add_learner(rt, "learner-2")]
    labs = [services.launch(rt, user, world.activity_id, "test").id for user in learners]
    run_queued_jobs(rt)
    minter = TokenMinter(settings.secret_key)
    old = TunnelProcess(settings, tmp_path, port).start()
    clients = [TunnelClient(old.url, minter.mint(Grant(user, lab, "", False))) for user, lab in zip(learners, labs)]
    for client in clients:
        client.until("sync")
    relayed = desktop_sessions(guacd)
    assert len(relayed) == 2 and not any(record.closed for record in relayed)

    new = TunnelProcess(settings, tmp_path, port).start()  # binds the same port: SO_REUSEPORT
    try:
        signalled = time.monotonic()
        old.process.send_signal(signal.SIGTERM)
        code = old.process.wait(timeout=20)
        print(f"\ntunnel exited {time.monotonic() - signalled:.2f} s after SIGTERM with {len(clients)} sessions open")

        assert code == 0
        guacd.wait_for(lambda: all(record.closed for record in relayed))
        assert all(record.clean_disconnect for record in relayed), "guacd heard `disconnect` for each session"
        assert [close_code(client) for client in clients] == [1001, 1001]  # "going away": the page reconnects
        again = TunnelClient(new.url, minter.mint(Grant(learners[0], labs[0], "", False)))  # the same address
        again.until("sync")
        assert len(desktop_sessions(guacd)) == 3 and new.process.poll() is None
        again.close()
    finally:
        new.stop()
        old.stop()
