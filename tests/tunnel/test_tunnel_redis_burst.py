"""A burst of desktop sessions opening or ending at once in one tunnel process.

Why: every session that opens or ends publishes the process's guacd load to Redis. redis-py 8's asyncio pool
allows 100 connections and then raises "Too many connections" instead of waiting, so when more than 100
sessions ended in the same moment (a class closing its tabs; bench/soak.py's 1,000 learners leaving) each
extra one failed with a traceback in the tunnel's log and its load record was not written.
"""

from __future__ import annotations

import asyncio

from broker.config import Settings
from broker.runtime import Runtime
from tunnel.hosts import LOAD_PREFIX
from tunnel.server import TunnelServer


def test_three_hundred_sessions_ending_at_once_all_publish_the_load(settings: Settings, rt: Runtime) -> None:
    async def burst() -> dict[bytes, bytes]:
        server = TunnelServer(settings, rt)
        address = server.hosts.addresses[0]
        try:
            await asyncio.gather(*(server.hosts.opened(address) for _ in range(300)))  # none may fail
            await asyncio.gather(*(server.hosts.closed(address) for _ in range(299)))
            await server.hosts.publish()  # the concurrent ones may land in any order; this one is last
            return await server.redis.hgetall(LOAD_PREFIX + server.hosts.process_id)
        finally:
            await server.redis.aclose()

    load = asyncio.run(burst())

    assert list(load.values()) == [b"1"]  # the one session still open
