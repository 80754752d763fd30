"""A real `labdesk tunnel` process for the tests, on a free port, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from broker.config import Settings
from broker.runtime import Runtime
from tests.support.http import LiveServer, serve
from tests.support.workers import ROOT, WorkerPool, settings_env

LISTENING = "tunnel listening on"  # what tunnel/server.py logs once its socket is bound


class TunnelProcess:
    """`labdesk tunnel --listen 127.0.0.1:<port>` with the test's settings (same database, Redis, keys)."""

    def __init__(self, settings: Settings, log_dir: Path, port: int) -> None:
        self.settings = settings
        self.port = port
        self.log_path = _fresh_log(log_dir, port)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/tunnel"

    def start(self) -> "TunnelProcess":
        log = open(self.log_path, "wb")
        args = [sys.executable, "-m", "app", "tunnel", "--listen", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(args, cwd=ROOT, env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the tunnel exited at start:\n{self.log()}")
            if LISTENING in self.log():  # its own word, not a connect: another tunnel may share the port
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the tunnel did not listen within 20 s:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _fresh_log(log_dir: Path, port: int) -> Path:
    """A log file of its own, also when two tunnels share a port (a restart)."""
    for n in range(100):
        path = log_dir / f"tunnel-{port}-{n}.log"
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free log name for port {port} in {log_dir}")


def serve_with_tunnel(rt: Runtime, settings: Settings, tmp_path: Path, workers: WorkerPool, ports: dict[str, int]) -> Iterator[LiveServer]:
    """A worker, a `labdesk tunnel` process and the web app over HTTP, all stopped afterwards."""
    from app import create_app

    workers.start(1)
    tunnel = TunnelProcess(settings, tmp_path, ports["tunnel"]).start()
    try:
        yield from serve(create_app(settings, rt), ports["web"])
    finally:
        tunnel.stop()
