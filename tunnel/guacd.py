"""The client side of guacd's handshake, done right where pyguacamole falls short.

pyguacamole's `GuacamoleClient.handshake` shows the order (select, args, size/audio/video/image,
connect, ready) and its encoder is used here, but it sends an empty protocol version, no `timezone` or
`name`, no `disconnect` on close, never answers `sync` (guacd drops a client it has not heard from for
15 s), blocks a thread, and reads on the first `;`. This module negotiates `VERSION_1_5_0` from the
version guacd names first in `args`, sends every capability, reads on length prefixes, and always says
`disconnect` before closing.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Mapping

from tunnel.protocol import Instruction, InstructionReader, ProtocolError, encode

# The protocol versions LabDesk speaks, oldest first. 1.5.0 brought `required`, `msg` and
# multi-user joins with per-user audio; guacd 1.5 and 1.6 both announce it.
KNOWN_VERSIONS = ("VERSION_1_5_0",)
_VERSION = re.compile(r"^VERSION_(\d+)_(\d+)_(\d+)$")
READ_SIZE = 256 * 1024


class HandshakeError(Exception):
    """guacd refused or broke the handshake; `status` is a Guacamole status code for the browser."""

    def __init__(self, message: str, status: int = 0x0203) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ClientInfo:
    """What the browser tells guacd about itself (screen, codecs, zone, the user's display name)."""

    width: int = 1024
    height: int = 768
    dpi: int = 96
    audio: tuple[str, ...] = ()
    video: tuple[str, ...] = ()
    image: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
    timezone: str = ""
    name: str = ""


@dataclass
class GuacdConnection:
    """An established guacd connection: its id (for joining), the socket, and what came after `ready`."""

    connection_id: str
    version: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    instructions: InstructionReader
    early: list[Instruction] = field(default_factory=list)

    async def close(self) -> None:
        """Tell guacd we are leaving (so it ends the session at once), then close the socket."""
        try:
            self.writer.write(encode("disconnect").encode())
            await asyncio.wait_for(self.writer.drain(), 2)
        except (OSError, asyncio.TimeoutError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError):
            pass


def negotiate(guacd_version: str) -> str:
    """The newest version both sides speak; guacd older than 1.5.0 (or naming none) is refused."""
    theirs = _version_tuple(guacd_version)
    if theirs is None or theirs < _version_tuple(KNOWN_VERSIONS[0]):  # type: ignore[operator]
        named = guacd_version if theirs is not None else "no protocol version"
        raise HandshakeError(f"guacd speaks {named}; LabDesk needs {KNOWN_VERSIONS[0]} or newer (guacd 1.5+)", 0x0203)
    return max((v for v in KNOWN_VERSIONS if _version_tuple(v) <= theirs), key=_version_tuple)  # type: ignore[operator,arg-type,return-value]


def handshake_messages(args: tuple[str, ...], params: Mapping[str, str], client: ClientInfo) -> tuple[str, str]:
    """The negotiated version, and everything sent after `args` in one piece, ending with `connect`."""
    version = negotiate(args[0] if args else "")
    names = args[1:]
    parts = [
        encode("size", client.width, client.height, client.dpi),
        encode("audio", *client.audio),
        encode("video", *client.video),
        encode("image", *client.image),
    ]
    if client.timezone:
        parts.append(encode("timezone", client.timezone))
    if client.name:
        parts.append(encode("name", client.name))
    parts.append(encode("connect", version, *(params.get(name, "") for name in names)))
    return version, "".join(parts)


async def connect(
    address: tuple[str, int], select: str, params: Mapping[str, str], client: ClientInfo, timeout: float = 10
) -> GuacdConnection:
    """Open a guacd connection for protocol `select` (or join connection `$id`) and complete the handshake."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise HandshakeError(f"guacd at {address[0]}:{address[1]} is unreachable: {exc or 'timeout'}", 0x0207) from None
    instructions = InstructionReader()
    try:
        writer.write(encode("select", select).encode())
        args = await _expect(reader, instructions, "args", timeout)
        version, rest = handshake_messages(args[0].args, params, client)
        writer.write(rest.encode())
        after = await _expect(reader, instructions, "ready", timeout)
    except HandshakeError:
        writer.close()
        raise
    except (OSError, asyncio.TimeoutError, ProtocolError) as exc:
        writer.close()
        raise HandshakeError(f"guacd handshake failed: {exc or 'timeout'}", 0x0202) from None
    ready, early = after[0], after[1:]
    return GuacdConnection(ready.args[0] if ready.args else "", version, reader, writer, instructions, early)


async def _expect(
    reader: asyncio.StreamReader, instructions: InstructionReader, opcode: str, timeout: float
) -> list[Instruction]:
    """Read until `opcode` arrives; return it followed by whatever came with it. `error` ends the wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        data = await asyncio.wait_for(reader.read(READ_SIZE), max(0.0, deadline - loop.time()))
        if not data:
            raise HandshakeError(f"guacd closed the connection while LabDesk waited for {opcode!r}", 0x0207)
        found = instructions.feed(data)
        for index, instruction in enumerate(found):
            if instruction.opcode == "error":
                message, status = (instruction.args + ("", "515"))[:2]
                raise HandshakeError(f"guacd: {message}", int(status) if status.isascii() and status.isdigit() else 0x0203)
            if instruction.opcode == opcode:
                return found[index:]


async def answer_syncs(connection: GuacdConnection, seconds: float) -> list[Instruction]:
    """Read for `seconds`, answering each `sync` as a browser would; return what arrived (tools, tests)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    seen = list(connection.early)  # what came with `ready` (often the first frame's sync): answer it too, once
    connection.early.clear()
    for instruction in seen:
        if instruction.opcode == "sync":
            connection.writer.write(encode("sync", *instruction.args[:1]).encode())
    while (left := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(connection.reader.read(READ_SIZE), left)
        except asyncio.TimeoutError:
            break
        if not data:
            break
        for instruction in connection.instructions.feed(data):
            seen.append(instruction)
            if instruction.opcode == "sync":
                connection.writer.write(encode("sync", *instruction.args[:1]).encode())
    return seen


def _version_tuple(version: str) -> tuple[int, int, int] | None:
    match = _VERSION.match(version)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None
