"""Live desktop sessions, recorded in Redis so every tunnel process and the web see them.

For each lab with a connected learner: which guacd holds the session and its guacd connection id, so an
instructor can join it read-only, and a reconnect or second tab lands on the same guacd. For each lab
being watched: who watches, so the learner's page can say so. Entries expire unless their tunnel
process refreshes them, so a crashed tunnel leaves nothing behind for long.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

PREFIX = "labdesk:tunnel:"
TTL = 60  # refreshed every TTL / 3 by the owning process

# Delete the owner record only if it is still this session's (a newer tab may have taken over).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True)
class LiveSession:
    """Where a learner's session runs: the guacd (host:port) and its connection id there."""

    lab_id: int
    guacd: str
    connection_id: str


def owner_key(lab_id: int) -> str:
    return f"{PREFIX}lab:{lab_id}"


def watchers_key(lab_id: int) -> str:
    return f"{PREFIX}watchers:{lab_id}"


class LiveSessions:
    """This process's live sessions, and the shared record of everyone's."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._owned: dict[int, str] = {}  # lab id → the record this process wrote
        self._watching: dict[tuple[int, str], str] = {}  # (lab id, session id) → watcher's name

    async def owner(self, lab_id: int) -> LiveSession | None:
        raw = await self.redis.get(owner_key(lab_id))
        return LiveSession(**json.loads(raw)) if raw else None

    async def claim(self, session: LiveSession) -> None:
        record = json.dumps(asdict(session))
        self._owned[session.lab_id] = record
        await self.redis.set(owner_key(session.lab_id), record, ex=TTL)

    async def release(self, session: LiveSession) -> None:
        record = self._owned.get(session.lab_id)
        if record is not None and record == json.dumps(asdict(session)):
            del self._owned[session.lab_id]
            await self.redis.eval(_RELEASE, 1, owner_key(session.lab_id), record)

    async def watch(self, lab_id: int, session_id: str, name: str) -> None:
        self._watching[(lab_id, session_id)] = name
        await self._write_watcher(lab_id, session_id, name)

    async def unwatch(self, lab_id: int, session_id: str) -> None:
        self._watching.pop((lab_id, session_id), None)
        await self.redis.hdel(watchers_key(lab_id), session_id)

    async def refresh(self) -> None:
        """Keep this process's records alive (called every TTL / 3)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for lab_id, record in self._owned.items():
                pipe.set(owner_key(lab_id), record, ex=TTL)
            for (lab_id, session_id), name in self._watching.items():
                pipe.hset(watchers_key(lab_id), session_id, name)
                pipe.expire(watchers_key(lab_id), TTL)
            await pipe.execute()

    async def _write_watcher(self, lab_id: int, session_id: str, name: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(watchers_key(lab_id), session_id, name)
            pipe.expire(watchers_key(lab_id), TTL)
            await pipe.execute()
