"""`bench.soak`'s samples over time: every stack process's VmRSS, the PostgreSQL connections to the bench's
database, Redis's memory and clients; and the least-squares slope that says whether memory stays flat.

Why: a leak shows as a slope, not as one number; a pool that grows shows as connections that climb with
the load instead of levelling off at the pools' size. Samples are taken by a thread every `every` seconds
while the learners run, and each is printed as it is taken, so a long run can be watched.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from redis import Redis
from sqlalchemy import create_engine, text

from bench.common import PG_ADMIN_URL, REDIS_URL


@dataclass
class Sample:
    at: float  # seconds since the learners started
    rss_kb: dict[str, int]  # VmRSS per stack process; for an rq worker's children, their private memory summed
    db_connections: int
    redis_bytes: int
    redis_clients: int


@dataclass
class Sampler:
    pids: Callable[[], dict[str, list[int]]]
    database: str
    every: float = 15.0
    samples: list[Sample] = field(default_factory=list)

    def start(self, t0: float) -> "Sampler":
        self._t0, self._stop = t0, threading.Event()
        self._engine = create_engine(PG_ADMIN_URL, pool_size=1)
        self._redis = Redis.from_url(REDIS_URL)
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, after one last sample."""
        self._stop.set()
        self._thread.join(30)
        self.take()
        self._engine.dispose()

    def _run(self) -> None:
        while True:
            try:
                self.take()
            except Exception as exc:  # noqa: BLE001  (a missed sample is reported, the run goes on)
                print(f"sample failed: {type(exc).__name__}: {exc}", flush=True)
            if self._stop.wait(self.every):
                return

    def take(self) -> Sample:
        rss = {name: sum(private_kb(pid) for pid in pids) if name.endswith("_children") else sum(rss_kb(pid) for pid in pids)
               for name, pids in self.pids().items()}
        with self._engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                                       {"name": self.database}).scalar_one()
        memory, clients = self._redis.info("memory"), self._redis.info("clients")
        sample = Sample(time.monotonic() - self._t0, rss, int(count), int(memory["used_memory"]), int(clients["connected_clients"]))
        self.samples.append(sample)
        shown = " ".join(f"{name}={kb / 1024:.0f}" for name, kb in rss.items())
        print(f"[{sample.at:6.0f} s] RSS MiB: {shown}; db connections {count}; redis {sample.redis_bytes / 2**20:.1f} MiB, "
              f"{sample.redis_clients} clients", flush=True)
        return sample


def rss_kb(pid: int) -> int:
    """VmRSS of a process in kB; 0 when it has gone (a work-horse that just finished)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def private_kb(pid: int) -> int:
    """The memory only this process holds (Private_Clean + Private_Dirty, kB): what a forked child (an rq
    work-horse, rq's scheduler) adds to its parent; its VmRSS would count their shared pages twice."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if line.startswith(("Private_Clean:", "Private_Dirty:")))


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per hour; 0 with fewer than 2 points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def memory_figures(samples: list[Sample], warm_up: float) -> list[tuple[str, object, str]]:
    """Per process: RSS at the first and last sample, and the slope over the samples after `warm_up` s."""
    if not samples:
        return []
    steady = [s for s in samples if s.at >= warm_up] or samples[-2:]
    rows: list[tuple[str, object, str]] = []
    for name in samples[-1].rss_kb:
        series = [(s.at, s.rss_kb.get(name, 0) / 1024) for s in steady]
        first = samples[0].rss_kb.get(name, 0) / 1024
        last = samples[-1].rss_kb[name] / 1024
        rows += [
            (f"rss_{name}_first_last", f"{first:.1f} → {last:.1f}", "MiB"),
            (f"rss_{name}_slope", round(slope_per_hour(series), 1), f"MiB/hour (least squares over {len(steady)} samples from {steady[0].at:.0f} s)"),
        ]
    return rows
