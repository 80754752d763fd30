"""A scaled-out LabDesk on one machine: N gunicorn web processes, M `labdesk tunnel` processes, K
`labdesk worker` processes and S `labdesk scheduler` processes, all real, all on one PostgreSQL database
and one Redis db (the settings'), each web and tunnel on a port of its own, as a load balancer would see
them. Every process is stopped by its own PID.

Why: LabDesk claims it scales out by adding stock processes (docs/architecture.md, "Scale-out"); this is
what tests/test_scale_out.py and bench/scale_out.py start to prove it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from redis import Redis
from rq import Worker

from broker.config import Settings
from tests.support.http import free_port
from tests.support.processes import stop_process
from tests.support.workers import ROOT, WorkerPool, settings_env


@dataclass(frozen=True)
class Shape:
    """How many processes of each kind."""

    web: int = 1
    tunnel: int = 1
    workers: int = 1
    schedulers: int = 1

    def __str__(self) -> str:
        return f"{self.web} web / {self.tunnel} tunnel / {self.workers} workers / {self.schedulers} schedulers"


class Stack:
    """Starts the processes of a `Shape` and stops them again (use as a context manager)."""

    def __init__(self, settings: Settings, log_dir: Path, shape: Shape, queues: tuple[str, ...],
                 web_ports: list[int] | None = None) -> None:
        self.settings = settings
        self.queues = queues  # every worker serves these, in this order (rq takes the first non-empty one)
        self.log_dir = log_dir
        self.shape = shape
        self.web_ports = web_ports or [free_port() for _ in range(shape.web)]
        self.workers = WorkerPool(settings, log_dir)
        self.tunnel_ports = [free_port() for _ in range(shape.tunnel)]
        self.others: list[subprocess.Popen[bytes]] = []  # gunicorn masters, tunnels and schedulers

    @property
    def web_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.web_ports]

    @property
    def tunnel_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/tunnel" for port in self.tunnel_ports]

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start everything at once, then wait until each web answers /healthz and each worker is registered."""
        for port in self.web_ports:
            self._spawn(["-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread",
                         "--threads", "8", "app:create_app()"], f"web-{port}")
        for index in range(self.shape.schedulers):
            self._spawn(["-m", "app", "scheduler"], f"scheduler-{index}")
        for port in self.tunnel_ports:
            self._spawn(["-m", "app", "tunnel", "--listen", f"127.0.0.1:{port}"], f"tunnel-{port}")
        self.workers.start(self.shape.workers, self.queues)
        for url in self.web_urls:
            self._wait(lambda url=url: _answers(url + "/healthz"), f"the web at {url}")
        for port in self.tunnel_ports:
            self._wait(lambda port=port: _answers(f"http://127.0.0.1:{port}/healthz"), f"the tunnel on port {port}")
        redis = Redis.from_url(self.settings.redis_url)
        try:
            self._wait(lambda: len(Worker.all(connection=redis)) >= self.shape.workers, f"{self.shape.workers} workers")
        finally:
            redis.close()

    def stop(self) -> None:
        """SIGTERM every process this stack started (by PID), SIGKILL those that outstay the grace. All
        are signalled before any is waited for: a test interrupted while waiting (its time-out) leaves no
        scheduler behind to enqueue sweeps into the next test's Redis db."""
        for process in self.others:
            if process.poll() is None:
                process.terminate()
        self.workers.stop()
        for process in self.others:
            stop_process(process, grace=15)

    def _spawn(self, args: list[str], name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=settings_env(self.settings),
                                   stdout=log, stderr=subprocess.STDOUT)
        self.others.append(process)

    def _wait(self, probe: object, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not probe():  # type: ignore[operator]
            dead = [p.args for p in self.others + self.workers.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited while waiting for {what}; logs in {self.log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}; logs in {self.log_dir}")
            time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
