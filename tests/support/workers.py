"""Real `labdesk worker` processes against the test Redis and database."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

from broker.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABDESK_")}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, tuple):
            value = ",".join(value)
        env[f"LABDESK_{field.name.upper()}"] = str(value)
    env.update(LABDESK_DATABASE_URL=settings.sqlalchemy_url, PYTHONUNBUFFERED="1")
    return env


class WorkerPool:
    """Starts worker processes on demand and stops every one it started, by PID."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, queues: tuple[str, ...] = ()) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            args = [sys.executable, "-m", "app", "worker"] + [a for q in queues for a in ("--queue", q)]
            log = open(self.log_dir / f"worker-{len(self.processes)}.log", "wb")
            process = subprocess.Popen(args, cwd=ROOT, env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(process)
            started.append(process)
        return started

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every process it forked (the work-horse calls setpgrp, so a group
        kill would miss it): nothing gets to clean up, like a host losing power."""
        tree = [process.pid] + _descendants(process.pid)
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)  # freeze first, so none can fork or exit mid-way
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child] + _descendants(child)
    return found
