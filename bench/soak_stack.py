"""The full LabDesk stack `bench.soak` loads, every part a real process on loopback.

PostgreSQL (a scratch database of its own, migrated), Redis db 12, gunicorn with the deploy's command line
(deploy/compose.yaml: gthread, 2 workers × 8 threads), `labdesk tunnel`, `--workers` `labdesk worker`
processes, `labdesk scheduler` (the sweeps run on their real cron), the guacd double as a process of its own
(bench/soak_guacd.py) and a fake backend whose state lives in files (`state_dir`, so every worker and
work-horse sees the same labs), whose desktops all point at the guacd double through the tunnel, and whose
`local` check target runs the activity's check script for real. The LTI platform is the benchmarks' own
signing platform (tests/lti/signing_platform.py), registered like a real LMS.

Why a module of its own: starting and stopping ten processes in the right order, and knowing their PIDs
for the memory samples, is one concept; the learners and the sampler only read `Stack.pids()`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from rq import Worker

from bench.common import REDIS_URL, Children, bench_settings, create_pg_database, drop_pg_database, settings_env, wait_for
from bench.keepalive import _answers, free_port
from broker import migrate
from broker.models import Backend, Image
from broker.runtime import Runtime
from lti import platforms
from tests.lti.signing_platform import SigningPlatform

BACKEND = "bench-soak"
LAB = "bench-soak-lab"
ENDPOINT = {"protocol": "vnc", "host": "10.9.8.7", "port": 5901, "password": "bench-pw"}
CHECK = "#!/bin/sh\nif [ -d \"$HOME\" ]; then echo \"The lab is up.\"; else echo \"No home.\" >&2; exit 1; fi\n"
SPEC = {"lab_user": {"name": "learner"}, "checks": [
    {"id": "lab-up", "title": "The lab is up", "weight": 1, "timeout": 20, "script": CHECK}]}
DB_POOL = 5 + 10  # broker/db.py: pool_size + max_overflow, per process


@dataclass
class Stack:
    """Start with `start()`, always end with `stop()` (it stops only what it started, by PID)."""

    workers: int = 2
    web_workers: int = 2
    leave_grace: int = 20
    sweep_interval: int = 15
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="labdesk-bench-soak-")))
    children: Children = field(default_factory=Children)
    database_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, lms: SigningPlatform) -> "Stack":
        Redis.from_url(REDIS_URL).flushdb()  # db 12 is the benchmarks' own
        self.database_url = create_pg_database()
        web_port, tunnel_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{web_port}"
        self.guacd_port = self._start_guacd()
        self.settings = bench_settings(
            self.database_url, self.work, public_url=self.base, default_backend=BACKEND, emulator=False,
            tunnel_listen=f"127.0.0.1:{tunnel_port}", guacd_hosts=(f"127.0.0.1:{self.guacd_port}",),
            leave_grace=self.leave_grace, sweep_interval=self.sweep_interval)
        migrate.upgrade(self.settings)
        self._seed(lms)
        env = self._env()
        me = [sys.executable, "-m", "app"]
        self.processes["web"] = self.children.start(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{web_port}", "-w", str(self.web_workers),
             "--worker-class", "gthread", "--threads", "8", "--graceful-timeout", "30", "--access-logfile", "-",
             "app:create_app()"], env, self.work / "web.log")
        self.processes["tunnel"] = self.children.start(me + ["tunnel", "--listen", f"127.0.0.1:{tunnel_port}"], env, self.work / "tunnel.log")
        for index in range(self.workers):
            self.processes[f"worker_{index + 1}"] = self.children.start(me + ["worker"], env, self.work / f"worker-{index + 1}.log")
        self.processes["scheduler"] = self.children.start(me + ["scheduler"], env, self.work / "scheduler.log")
        wait_for(lambda: self.exited() or _answers(self.base), 60, what=f"gunicorn to answer; log {self.work / 'web.log'}")
        wait_for(lambda: self.exited() or _listening(tunnel_port), 30, what="the tunnel to listen")
        wait_for(lambda: self.exited() or len(Worker.all(connection=Redis.from_url(REDIS_URL))) >= self.workers, 120,
                 what="the rq workers to register")
        if self.exited():
            raise SystemExit(f"a stack process exited at start: {self.exited()}; logs in {self.work}")
        return self

    def _start_guacd(self) -> int:
        log = self.work / "guacd.log"
        self.processes["guacd_double"] = self.children.start([sys.executable, "-m", "bench.soak_guacd"], {**settings_env_base(), "PYTHONUNBUFFERED": "1"}, log)
        found = wait_for(lambda: _listening_line(log), 30, 0.05, "the guacd double to listen")
        return int(found)  # type: ignore[call-overload]

    def _env(self) -> dict[str, str]:
        s = self.settings
        return settings_env(s, LABDESK_PUBLIC_URL=s.public_url, LABDESK_DEFAULT_BACKEND=BACKEND, LABDESK_EMULATOR="false",
                            LABDESK_TUNNEL_LISTEN=s.tunnel_listen, LABDESK_GUACD_HOSTS=",".join(s.guacd_hosts),
                            LABDESK_LEAVE_GRACE=str(s.leave_grace), LABDESK_SWEEP_INTERVAL=str(s.sweep_interval),
                            WEB_CONCURRENCY=str(self.web_workers))

    def _seed(self, lms: SigningPlatform) -> None:
        rt = Runtime(self.settings)
        platforms.add(rt, **lms.registration(), name="Bench LMS")
        config = {"state_dir": str(self.work / "fake"), "check_home": str(self.work / "lab-home"), "endpoints": [ENDPOINT]}
        (self.work / "lab-home").mkdir()
        with rt.session() as db:
            db.add(Backend(name=BACKEND, kind="fake", config=config))
            db.add(Image(slug=LAB, title="Soak lab", protocol="vnc", spec=SPEC))
            db.commit()
        rt.close()

    def exited(self) -> str:
        return ", ".join(name for name, process in self.processes.items() if process.poll() is not None)

    def pids(self) -> dict[str, list[int]]:
        """Each stack process's PIDs now: gunicorn's master and workers apart, and each rq worker's children
        (rq's scheduler, and the work-horse it has forked at this moment, if any) as `<worker>_children`."""
        found: dict[str, list[int]] = {}
        for name, process in self.processes.items():
            if name == "guacd_double":
                continue  # not LabDesk: it keeps every instruction it is sent, so it grows by design
            if name == "web":
                found["web_master"] = [process.pid]
                for index, child in enumerate(sorted(children_of(process.pid))):
                    found[f"web_worker_{index + 1}"] = [child]
            elif name.startswith("worker_"):
                found[name] = [process.pid]
                found[f"{name}_children"] = children_of(process.pid)
            else:
                found[name] = [process.pid]
        return found

    def db_pool_bound(self) -> int:
        """Connections the pools allow: 15 per process (broker/db.py) for each gunicorn worker, the tunnel,
        the scheduler, and each rq worker and the work-horse it forks."""
        return DB_POOL * (self.web_workers + 1 + 1 + 2 * self.workers)

    def stop(self) -> None:
        self.children.stop()
        if self.database_url:
            drop_pg_database(self.database_url)
            self.database_url = ""
        Redis.from_url(REDIS_URL).flushdb()

    def remove_work(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def settings_env_base() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LABDESK_")}


def children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _listening_line(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("listening "):
            return line.split()[1]
    return ""


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False
