"""How each guacd is doing, as the tunnel processes report it: for the admin console and `labdesk doctor`.

The web never probes guacd itself: every tunnel process already checks each guacd with a real `select`
every `guacd_check_interval` seconds (tunnel.hosts) and publishes what it found in Redis, next to the
sessions it holds. This module is that layout's one definition (the tunnel writes it, this reads it):

    labdesk:tunnel:processes         zset   tunnel process id -> time of its last report
    labdesk:tunnel:load:<process>    hash   guacd "host:port" -> sessions that process holds there
    labdesk:tunnel:health:<process>  hash   guacd "host:port" -> "1" (answers the protocol) or "0"

A process that has not reported for three intervals counts as gone (it died or was scaled away).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

LOAD_PREFIX = "labdesk:tunnel:load:"
HEALTH_PREFIX = "labdesk:tunnel:health:"
PROCESSES = "labdesk:tunnel:processes"


@dataclass(frozen=True)
class GuacdStatus:
    address: str
    up_in: int  # tunnel processes that found it answering
    reporting: int  # tunnel processes that checked it recently
    sessions: int  # desktop sessions on it, over all tunnel processes

    @property
    def state(self) -> str:
        """"up", "down", "partly" (some tunnels reach it, some do not) or "unknown" (no tunnel reported)."""
        if self.reporting == 0:
            return "unknown"
        if self.up_in == self.reporting:
            return "up"
        return "down" if self.up_in == 0 else "partly"


def guacd_status(redis: Any, hosts: tuple[str, ...], interval: float, now: float | None = None) -> tuple[list[GuacdStatus], int]:
    """Each configured guacd's status, and how many tunnel processes reported within three intervals."""
    since = (now if now is not None else time.time()) - 3 * interval
    processes = [p.decode() if isinstance(p, bytes) else p for p in redis.zrangebyscore(PROCESSES, since, "+inf")]
    pipe = redis.pipeline(transaction=False)
    for process in processes:
        pipe.hgetall(HEALTH_PREFIX + process)
        pipe.hgetall(LOAD_PREFIX + process)
    answers = pipe.execute() if processes else []
    healths, loads = [_decoded(h) for h in answers[0::2]], [_decoded(h) for h in answers[1::2]]
    statuses = [
        GuacdStatus(
            address=host,
            up_in=sum(1 for health in healths if health.get(host) == "1"),
            reporting=sum(1 for health in healths if host in health),
            sessions=sum(int(load.get(host, 0)) for load in loads),
        )
        for host in hosts
    ]
    return statuses, len(processes)


def _decoded(mapping: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in mapping.items()}
