"""Choosing a guacd: the configured hosts, health-checked, least connections first.

Every tunnel process checks each guacd every `guacd_check_interval` seconds with a real `select` (a
guacd that accepts TCP but no longer answers the protocol counts as down) and publishes how many
sessions it holds on each guacd. A new session goes to the healthy guacd with the fewest sessions across
all tunnel processes; a lab whose session is live sticks to that session's guacd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter

from redis.asyncio import Redis

from broker.guacd_status import HEALTH_PREFIX, LOAD_PREFIX, PROCESSES
from tunnel.protocol import InstructionReader, ProtocolError, encode

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 3.0

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """`host:port` (or `[v6]:port`) to a tuple; a ValueError names what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def label(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


async def probe(address: Address, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether guacd at `address` answers a `select` with `args` (then we leave with `disconnect`)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(encode("select", "vnc").encode())
        instructions = InstructionReader()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(4096), max(0.01, deadline - time.monotonic()))
            if not data:
                return False
            found = instructions.feed(data)
            if found:
                return found[0].opcode == "args"
        return False
    except (OSError, asyncio.TimeoutError, ProtocolError):
        return False
    finally:
        writer.write(encode("disconnect").encode())
        writer.close()


class GuacdHosts:
    """The guacd hosts as this process sees them: health, and everyone's session counts via Redis."""

    def __init__(self, addresses: list[Address], redis: Redis, interval: float) -> None:
        self.addresses = addresses
        self.redis = redis
        self.interval = interval
        self.healthy: dict[Address, bool] = {address: True for address in addresses}  # until checked
        self.checked = False  # health is published only once it was really checked
        self.mine: Counter[str] = Counter()
        self.process_id = f"{socket.gethostname()}:{os.getpid()}"

    async def choose(self, sticky: str | None = None) -> Address | None:
        """The guacd for a new session: the sticky one if healthy, else the least loaded healthy one."""
        up = [address for address in self.addresses if self.healthy[address]]
        if sticky is not None:
            return next((address for address in up if label(address) == sticky), None)
        if not up:
            return None
        load = await self.load()
        return min(up, key=lambda address: (load[label(address)], self.addresses.index(address)))

    async def load(self) -> Counter[str]:
        """Sessions per guacd, summed over the tunnel processes that reported recently."""
        since = time.time() - 3 * self.interval
        processes = await self.redis.zrangebyscore(PROCESSES, since, "+inf")
        total: Counter[str] = Counter(self.mine)
        if processes:
            async with self.redis.pipeline(transaction=False) as pipe:
                for process in processes:
                    if process.decode() != self.process_id:
                        pipe.hgetall(LOAD_PREFIX + process.decode())
                for counts in await pipe.execute():
                    total.update({key.decode(): int(value) for key, value in counts.items()})
        return total

    async def opened(self, address: Address) -> None:
        self.mine[label(address)] += 1
        await self.publish()

    async def closed(self, address: Address) -> None:
        self.mine[label(address)] -= 1
        await self.publish()

    async def publish(self) -> None:
        key = LOAD_PREFIX + self.process_id
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            counts = {name: count for name, count in self.mine.items() if count > 0}
            if counts:
                pipe.hset(key, mapping=counts)
            pipe.expire(key, int(3 * self.interval) + 1)
            if self.checked:
                health = HEALTH_PREFIX + self.process_id  # for the admin console (broker.guacd_status)
                pipe.hset(health, mapping={label(address): "1" if ok else "0" for address, ok in self.healthy.items()})
                pipe.expire(health, int(3 * self.interval) + 1)
            pipe.zadd(PROCESSES, {self.process_id: time.time()})
            pipe.zremrangebyscore(PROCESSES, 0, time.time() - 3600)
            await pipe.execute()

    async def check(self) -> None:
        """Probe every guacd once, logging changes of health."""
        results = await asyncio.gather(*(probe(address) for address in self.addresses))
        for address, ok in zip(self.addresses, results):
            if ok != self.healthy[address]:
                log.warning("guacd %s is %s", label(address), "up again" if ok else "DOWN")
            self.healthy[address] = ok
        self.checked = True
        await self.publish()
