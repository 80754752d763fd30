"""Relaying one desktop session between a browser's WebSocket and its guacd connection.

guacd → browser: bytes are read as they come, cut on instruction boundaries, and every whole instruction
of a read goes out in one WebSocket message (never half of one: guacamole-common-js parses each message
on its own); they are cut on the bytes and forwarded as they came, never decoded and re-encoded.
Browser → guacd: each message is parsed; the tunnel's own `ping` is answered here, and a
read-only session may send only what cannot change the desktop. Whichever side ends, guacd hears
`disconnect` and the browser's socket closes.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Protocol

from tunnel.guacd import READ_SIZE, GuacdConnection
from tunnel.protocol import INTERNAL_OPCODE, InstructionCutter, InstructionReader, ProtocolError, encode

# What a read-only (watching) browser may send: frame acknowledgements, keepalives, its own size.
READ_ONLY_ALLOWED = frozenset({"sync", "nop", "size", "disconnect", "ack"})
MAX_QUEUED = 4 * 1024 * 1024  # bytes waiting for a slow guacd before the session is ended


class Browser(Protocol):
    """The subset of a websockets connection the relay uses (and a test can provide)."""

    async def send(self, message: str | bytes, text: bool | None = None) -> None: ...
    async def recv(self) -> str | bytes: ...


@dataclass(frozen=True)
class Ended:
    """How a relayed session ended, for the log and for the audit."""

    by: str  # "browser", "guacd" or "error"
    detail: str = ""


async def relay(browser: Browser, guacd: GuacdConnection, read_only: bool) -> Ended:
    """Run the session until one side ends; always leaves guacd disconnected."""
    await browser.send(encode(INTERNAL_OPCODE, str(uuid.uuid4())) + "".join(i.raw for i in guacd.early))
    down = asyncio.ensure_future(_guacd_to_browser(guacd, browser))
    up = asyncio.ensure_future(_browser_to_guacd(browser, guacd, read_only))
    try:
        done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        return _outcome(done.pop())
    finally:
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        await guacd.close()


async def _guacd_to_browser(guacd: GuacdConnection, browser: Browser) -> Ended:
    cutter = InstructionCutter(guacd.instructions.unread())
    while True:
        data = await guacd.reader.read(READ_SIZE)
        if not data:
            return Ended("guacd", "guacd closed the connection")
        complete, opcodes = cutter.feed(data)
        if complete:
            await browser.send(complete, text=True)  # UTF-8 as it came: a text frame, never decoded here
        if "disconnect" in opcodes:
            return Ended("guacd", "guacd ended the session")  # it may hold the socket open for a minute more


async def _browser_to_guacd(browser: Browser, guacd: GuacdConnection, read_only: bool) -> Ended:
    reader = InstructionReader()
    while True:
        message = await browser.recv()
        text = message if isinstance(message, str) else _text(message)
        forward = []
        for instruction in reader.feed_text(text):
            if instruction.opcode == INTERNAL_OPCODE:
                await _answer_internal(browser, instruction.args)
            elif instruction.opcode == "disconnect":
                return Ended("browser", "the browser disconnected")
            elif not read_only or instruction.opcode in READ_ONLY_ALLOWED:
                forward.append(instruction.raw)
        if forward:
            guacd.writer.write("".join(forward).encode())
            if guacd.writer.transport.get_write_buffer_size() > MAX_QUEUED:
                await guacd.writer.drain()


def _text(message: bytes) -> str:
    """A binary frame from the browser must still be UTF-8 Guacamole text."""
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not UTF-8: {exc}") from None


async def _answer_internal(browser: Browser, args: tuple[str, ...]) -> None:
    """guacamole-common-js pings the tunnel twice a second to measure it; the tunnel echoes the ping."""
    if args[:1] == ("ping",):
        await browser.send(encode(INTERNAL_OPCODE, *args))


def _outcome(task: asyncio.Future[Ended]) -> Ended:
    error = task.exception()
    if error is None:
        return task.result()
    if isinstance(error, ProtocolError):
        return Ended("error", f"protocol error: {error}")
    if isinstance(error, (ConnectionError, OSError)):
        return Ended("guacd", f"guacd connection lost: {error}")
    return Ended("browser", f"{type(error).__name__}: {error}")
