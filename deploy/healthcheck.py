"""Container health checks for compose and Kubernetes probes: exit 0 when healthy, 1 with one line when not.

The web and the tunnel answer `GET /healthz` themselves (`web/health.py`, `tunnel/server.py`); the image has
no curl, so `http URL` fetches it with the standard library. Workers and the scheduler serve no HTTP, but rq
registers each of them in Redis under the host's name and lets the entry expire when the process stops
heartbeating: `worker` and `scheduler` check that an entry of *this* host (a container or pod) is there,
which proves the process is alive and talking to Redis.

    python deploy/healthcheck.py http http://127.0.0.1:8000/healthz
    python deploy/healthcheck.py worker
    python deploy/healthcheck.py scheduler
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from typing import Callable

TIMEOUT = 5


def http(url: str) -> str | None:
    """None when `url` answers 2xx; else why not (a 503 from /healthz means the database, Redis or every
    guacd is down)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return None if 200 <= response.status < 300 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}: {exc.read(200).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def _redis():  # type: ignore[no-untyped-def]
    from redis import Redis

    from broker.config import load_settings

    return Redis.from_url(load_settings().redis_url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


def worker() -> str | None:
    """None when an rq worker of this host is registered (its key lives while it heartbeats)."""
    from rq import Worker

    host = socket.gethostname()
    names = [w.name for w in Worker.all(connection=_redis()) if w.hostname == host]
    return None if names else f"no rq worker of host {host} is registered in Redis"


def scheduler() -> str | None:
    """None when rq's cron scheduler of this host is registered (stale entries are cleaned up first)."""
    from rq.cron import CronScheduler

    host = socket.gethostname()
    names = [s.name for s in CronScheduler.all(connection=_redis()) if s.hostname == host]
    return None if names else f"no cron scheduler of host {host} is registered in Redis"


CHECKS: dict[str, Callable[..., str | None]] = {"http": http, "worker": worker, "scheduler": scheduler}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in CHECKS:
        print(f"usage: healthcheck.py {{{'|'.join(CHECKS)}}} [URL]", file=sys.stderr)
        return 2
    try:
        problem = CHECKS[argv[0]](*argv[1:])
    except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
