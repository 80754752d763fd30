"""The tunnel process: a WebSocket server that opens one guacd session per connection token.

It is an asyncio process of its own (`labdesk tunnel`): a desktop session is a long-lived, mostly idle
connection, and one event loop holds thousands of them in a few tens of kB each, where a thread or
process per session could not (docs/desktop.md has the measurements). Database lookups, which are
short and synchronous, run in the default thread pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from typing import Awaitable
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.exceptions import ConnectionClosed

from broker.config import Settings
from broker.guacd_params import connection_params
from broker.runtime import Runtime
from broker.secrets import secret_key
from broker.tunnel_tokens import USED_PREFIX, MAX_TTL, Grant, Refused, TokenMinter, TokenRefused
from tunnel import access
from tunnel.access import AccessRefused, Target
from tunnel.guacd import ClientInfo, GuacdConnection, HandshakeError, connect
from tunnel.hosts import Address, GuacdHosts, label, parse_address
from tunnel.live import TTL, LiveSession, LiveSessions
from tunnel.protocol import encode
from tunnel.relay import relay

log = logging.getLogger(__name__)
PATH = "/tunnel"
REDIS_CONNECTIONS = 100  # per tunnel process; sessions wait their turn past it (each holds one only while it writes)
SERVER_BUSY, UPSTREAM_NOT_FOUND, NOT_FOUND = 0x0201, 0x0207, 0x0204
_TIMEZONE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")
_MIMETYPE = re.compile(r"^[a-z]+/[A-Za-z0-9.+\-;=]{1,64}$")


class TunnelServer:
    """Everything one tunnel process shares between its sessions."""

    def __init__(self, settings: Settings, rt: Runtime) -> None:
        self.settings = settings
        self.rt = rt
        self.minter = TokenMinter(secret_key(settings), settings.tunnel_token_ttl)
        # Blocking: past its size the pool waits for a free connection, where redis-py's default pool raises
        # "Too many connections" (a burst of sessions ending at once; tests/tunnel/test_tunnel_redis_burst.py).
        self.redis = Redis.from_pool(BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=10, socket_timeout=5, socket_connect_timeout=2))
        addresses = [parse_address(text) for text in settings.guacd_hosts]
        self.hosts = GuacdHosts(addresses, self.redis, settings.guacd_check_interval)
        self.live = LiveSessions(self.redis)
        self.active = 0

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        """Listen until cancelled, checking guacd and refreshing live records in the background.

        SO_REUSEPORT: a new tunnel process binds the port while the old one still serves, so a restart
        leaves no moment without a listener (docs/deploy.md, "Graceful operations"). Cancelled, the
        server stops listening first, then closes every session with 1001 "going away"."""
        async with serve(
            self.handle, host, port, subprotocols=["guacamole"],  # type: ignore[list-item]
            process_request=self._health, compression=None, max_size=1 << 20, ping_interval=20, ping_timeout=20, close_timeout=2,
            reuse_port=True,
        ) as server:
            log.info("tunnel listening on ws://%s:%s%s for guacd %s", host, port, PATH, ", ".join(self.settings.guacd_hosts))
            if ready is not None:
                ready.set()
            await asyncio.gather(self._every(self.settings.guacd_check_interval, self.hosts.check),
                                 self._every(TTL / 3, self.live.refresh), _forever(server))

    def _health(self, ws: ServerConnection, request: Request) -> Response | None:
        """`GET /healthz` for load balancers: 200 while some guacd is up, else 503; sessions and guacd health."""
        if urlsplit(request.path).path != "/healthz":
            return None
        up = {label(address): ok for address, ok in self.hosts.healthy.items()}
        body = json.dumps({"sessions": self.active, "guacd": up})
        response = ws.respond(200 if any(up.values()) else 503, body + "\n")
        response.headers["Content-Type"] = "application/json"
        return response

    async def handle(self, ws: ServerConnection) -> None:
        """One browser connection: check the token, open guacd, relay until either side ends."""
        request = urlsplit(ws.request.path if ws.request else "")
        if request.path != PATH:
            return await _refuse(ws, "No such tunnel endpoint.", NOT_FOUND)
        if self.active >= self.settings.tunnel_max_connections:
            return await _refuse(ws, "The desktop service is busy. Try again in a minute.", SERVER_BUSY)
        self.active += 1
        try:
            await self._session(ws, parse_qs(request.query))
        finally:
            self.active -= 1

    async def _session(self, ws: ServerConnection, query: dict[str, list[str]]) -> None:
        try:
            grant = await self._grant(_first(query, "token"))
            target = await asyncio.to_thread(access.resolve, self.rt, grant)
            address, select = await self._route(target)
        except Refused as exc:
            log.info("tunnel session refused: %s", exc.message)
            return await _refuse(ws, exc.message, exc.status)
        params = connection_params(target.endpoint, target.read_only, _first(query, "layout"))
        try:
            guacd = await connect(address, select, params, client_info(query, target.viewer_name))
        except HandshakeError as exc:
            log.warning("lab %s: %s", target.lab_id, exc)
            return await _refuse(ws, "The desktop service could not reach your lab. Retrying may help.", exc.status)
        await self._relay(ws, grant, target, address, guacd)

    async def _grant(self, token: str) -> Grant:
        grant = self.minter.open(token)
        if not await self.redis.set(USED_PREFIX + grant.jti, 1, nx=True, ex=MAX_TTL * 2 + 10):
            raise TokenRefused("the token was already used")
        return grant

    async def _route(self, target: Target) -> tuple[Address, str]:
        """Which guacd, and what to `select`: the lab's protocol, or for a watcher the live session's id."""
        owner = await self.live.owner(target.lab_id)
        if target.watch:
            if owner is None:
                raise AccessRefused("The learner is not connected right now. Try again when they are.", NOT_FOUND)
            address = await self.hosts.choose(sticky=owner.guacd)
            select = owner.connection_id  # guacd's ids start with "$", which `select` takes as "join"
        else:
            address = await self.hosts.choose(sticky=owner.guacd if owner else None) or await self.hosts.choose()
            select = target.endpoint.protocol
        if address is None:
            raise AccessRefused("No desktop service is available right now. Try again in a minute.", UPSTREAM_NOT_FOUND)
        return address, select

    async def _relay(self, ws: ServerConnection, grant: Grant, target: Target, address: Address, guacd: GuacdConnection) -> None:
        session = LiveSession(target.lab_id, label(address), guacd.connection_id)
        watch_id = secrets.token_hex(8)
        await self.hosts.opened(address)
        if target.watch:
            await self.live.watch(target.lab_id, watch_id, target.viewer_name)
            await asyncio.to_thread(access.audit, self.rt, target.lab_id, grant.user_id, "watch.start", "read-only")
        else:
            await self.live.claim(session)
        try:
            ended = await relay(ws, guacd, target.read_only)
            log.info("lab %s session on %s ended by %s: %s", target.lab_id, session.guacd, ended.by, ended.detail)
        finally:
            await _best_effort(self.hosts.closed(address), "the guacd load")
            if target.watch:
                await _best_effort(self.live.unwatch(target.lab_id, watch_id), "the watcher's end")
                await asyncio.to_thread(access.audit, self.rt, target.lab_id, grant.user_id, "watch.end", "")
            else:
                await _best_effort(self.live.release(session), "the live session's end")
            await ws.close()

    async def _every(self, seconds: float, action) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                await action()
            except Exception:  # a Redis or guacd hiccup must not end the loop
                log.exception("tunnel background task failed")
            await asyncio.sleep(seconds)


async def _best_effort(step: Awaitable[None], what: str) -> None:
    """Bookkeeping in Redis as a session ends. Redis being down then must not turn the session's close into a
    traceback with the browser's socket left open: each record it would update expires on its own (the
    live-session TTL, the load record's three check intervals)."""
    try:
        await step
    except (RedisError, OSError) as exc:
        log.warning("tunnel: %s not recorded (%s); its record expires on its own", what, exc)


def client_info(query: dict[str, list[str]], name: str) -> ClientInfo:
    """The browser's screen and codecs from its query string, bounded and filtered; the name is ours."""
    return ClientInfo(
        width=_bounded(_first(query, "width"), 1024, 8192),
        height=_bounded(_first(query, "height"), 768, 8192),
        dpi=_bounded(_first(query, "dpi"), 96, 600),
        audio=tuple(m for m in query.get("audio", [])[:8] if _MIMETYPE.match(m)),
        video=tuple(m for m in query.get("video", [])[:8] if _MIMETYPE.match(m)),
        image=tuple(m for m in query.get("image", [])[:8] if _MIMETYPE.match(m)) or ClientInfo.image,
        timezone=tz if _TIMEZONE.match(tz := _first(query, "timezone")) else "",
        name=name,
    )


def _first(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


def _bounded(text: str, default: int, limit: int) -> int:
    """A positive number of at most `limit` ("²" is a digit to str.isdigit; 5,000 digits overflow int())."""
    return min(int(text), limit) if text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0 else default


async def _refuse(ws: ServerConnection, message: str, status: int) -> None:
    """Tell guacamole-common-js why, the way Guacamole does: an `error` instruction, then a close whose
    reason is the status code."""
    try:
        await ws.send(encode("error", message, status))
        await ws.close(code=1008 if status >= 0x0300 else 1011, reason=str(status))
    except ConnectionClosed:
        pass


async def _forever(server: Server) -> None:
    await server.serve_forever()
