"""The desktop of one `bench.soak` learner: the WebSocket through `labdesk tunnel`, as guacamole-common-js
uses it (subprotocol `guacamole`, whole instructions per message).

Why its own module: it is the one long-lived connection of a learner, and the figures it records
(`tunnel_open`: the WebSocket to the first guacd `sync`; `tunnel_sync`: how late each `sync` arrives,
guacd's clock being ours on loopback; a desktop that closes unasked) are the tunnel's.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

from websockets.exceptions import ConnectionClosed

from bench.soak_record import Recorder
from tunnel.protocol import InstructionReader, encode


class Desktop:
    """The desktop WebSocket, as guacamole-common-js uses it: answer every `sync`, move the mouse."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self.last_sync = 0.0
        self.closed = True
        self.task: asyncio.Task[None] | None = None
        self.ws: Any = None

    async def open(self, tunnel_url: str, token: str) -> bool:
        from websockets.asyncio.client import connect

        query = urllib.parse.urlencode({"token": token, "width": 1280, "height": 720, "dpi": 96})
        started = time.perf_counter()
        try:
            self.ws = await connect(f"{tunnel_url}?{query}", subprotocols=["guacamole"], compression=None, open_timeout=60)  # type: ignore[list-item]
            self.closed = False
            reader = InstructionReader()
            while not self.last_sync:  # the handshake is done and the first frame came when guacd's first sync arrives
                for instruction in reader.feed_text(await asyncio.wait_for(self.ws.recv(), 60)):
                    await self._handle(instruction)
        except Exception as exc:  # noqa: BLE001  (recorded: the learner has no desktop)
            self.rec.error("tunnel_open", f"{type(exc).__name__}: {exc}")
            await self.close()
            return False
        self.rec.ok("tunnel_open", time.perf_counter() - started)
        self.task = asyncio.ensure_future(self._stream(reader))
        return True

    async def _handle(self, instruction: Any) -> None:
        if instruction.opcode == "sync":
            self.last_sync = time.monotonic()
            self.rec.ok("tunnel_sync", max(0.0, time.time() - int(instruction.args[0]) / 1000))  # guacd's clock is ours
            await self.ws.send(encode("sync", instruction.args[0]))
        elif instruction.opcode == "error":
            raise RuntimeError(f"the tunnel sent error {instruction.args}")

    async def _stream(self, reader: InstructionReader) -> None:
        mouse = asyncio.ensure_future(self._move_mouse())
        try:
            async for message in self.ws:
                for instruction in reader.feed_text(message):
                    await self._handle(instruction)
            if not self.closed:
                self.rec.error("tunnel_sync", f"the tunnel closed the desktop: {self.ws.close_code} {self.ws.close_reason!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            if not self.closed:
                self.rec.error("tunnel_sync", f"{type(exc).__name__}: {exc}")
        finally:
            mouse.cancel()
            self.closed = True

    async def _move_mouse(self) -> None:
        x = y = 100
        try:
            while True:
                await asyncio.sleep(1.0)
                x, y = (x + 7) % 1280, (y + 5) % 720
                await self.ws.send(encode("mouse", x, y, 0))
        except ConnectionClosed:  # the stream task records why
            pass

    def streaming(self) -> bool:
        """Open, and a sync came within the last 5 s (guacd sends one a second)."""
        return not self.closed and time.monotonic() - self.last_sync < 5

    async def close(self) -> None:
        if self.ws is None or self.closed and self.task is None:
            return
        self.closed = True
        try:
            await self.ws.send(encode("disconnect"))
            await self.ws.close()
        except Exception:  # noqa: BLE001  (already gone: nothing to close)
            pass
        if self.task:
            self.task.cancel()
            self.task = None
