"""Real `labdesk worker` processes against the test Redis and database."""

from __future__ import annotations

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
    env.update(
        LABDESK_DATA_DIR=settings.data_dir,
        LABDESK_DATABASE_URL=settings.sqlalchemy_url,
        LABDESK_REDIS_URL=settings.redis_url,
        LABDESK_POLL_INTERVAL=str(settings.poll_interval),
        LABDESK_ENCRYPTION_KEYS=",".join(settings.encryption_keys),
        LABDESK_MAX_TRANSIENT_RETRIES=str(settings.max_transient_retries),
        PYTHONUNBUFFERED="1",
    )
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
                process.kill()
                process.wait()
