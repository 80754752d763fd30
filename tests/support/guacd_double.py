"""A guacd test double that speaks the real Guacamole protocol over TCP.

Why it exists: guacd is not packaged in Debian, and LabDesk's tunnel must be tested against the protocol
as guacd 1.6 speaks it (select, args with the real argument lists, size/audio/video/image/timezone/name,
connect, ready, then img/blob/end/sync frames, sync replies, disconnect, the 15 s silence rule). The double
records everything a client does so tests can assert on the wire behaviour.

It deliberately does not import `tunnel.*`: it frames instructions with its own small codec, so a framing
bug in LabDesk cannot hide behind the same bug here.

The double runs an asyncio server in a background thread and is driven from ordinary (sync) test code:

    with GuacdDouble(sync_interval=0.2) as guacd:
        ... connect LabDesk to guacd.address ...
        guacd.wait_for(lambda: guacd.connections and guacd.connections[0].ready)

It is stricter than guacd in two places, on purpose: the handshake instructions must come in the order
guacamole-common-js and LabDesk send them, and `connect` must carry a `VERSION_x_y_z` and exactly one value
per announced argument (guacd would accept an empty version and merely log a wrong count).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import re
import struct
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

# The argument names guacd 1.6.0 announces in `args` (after the protocol version), copied from
# apache/guacamole-server tag 1.6.0, src/protocols/<protocol>/settings.c, GUAC_<P>_CLIENT_ARGS, as built
# with the default options (VNC repeater, PulseAudio, VNC listen and common SSH/SFTP on; SSH agent off).
_SFTP = (
    "enable-sftp", "sftp-hostname", "sftp-host-key", "sftp-port", "sftp-timeout", "sftp-username",
    "sftp-password", "sftp-private-key", "sftp-passphrase", "sftp-public-key", "sftp-directory",
    "sftp-root-directory", "sftp-server-alive-interval", "sftp-disable-download", "sftp-disable-upload",
)
_RECORDING = (
    "recording-path", "recording-name", "recording-exclude-output", "recording-exclude-mouse",
    "recording-include-keys", "create-recording-path", "recording-write-existing",
)
_TYPESCRIPT = ("typescript-path", "typescript-name", "create-typescript-path", "typescript-write-existing")
_WOL = ("wol-send-packet", "wol-mac-addr", "wol-broadcast-addr", "wol-udp-port", "wol-wait-time")

ARGS: dict[str, tuple[str, ...]] = {
    "vnc": (
        "hostname", "port", "read-only", "disable-display-resize", "encodings", "username", "password",
        "swap-red-blue", "color-depth", "cursor", "autoretry", "clipboard-encoding",
        "dest-host", "dest-port", "enable-audio", "audio-servername", "reverse-connect", "listen-timeout",
        *_SFTP, *_RECORDING, "disable-copy", "disable-paste", "disable-server-input", *_WOL,
        "force-lossless", "compress-level", "quality-level",
    ),
    "ssh": (
        "hostname", "host-key", "port", "timeout", "username", "password", "font-name", "font-size",
        "enable-sftp", "sftp-root-directory", "sftp-disable-download", "sftp-disable-upload",
        "private-key", "passphrase", "public-key", "color-scheme", "command", *_TYPESCRIPT, *_RECORDING,
        "read-only", "server-alive-interval", "backspace", "terminal-type", "scrollback", "locale",
        "timezone", "disable-copy", "disable-paste", *_WOL,
    ),
    "rdp": (
        "hostname", "port", "timeout", "domain", "username", "password", "width", "height", "dpi",
        "initial-program", "color-depth", "disable-audio", "enable-printing", "printer-name",
        "enable-drive", "drive-name", "drive-path", "create-drive-path", "disable-download",
        "disable-upload", "console", "console-audio", "server-layout", "security", "ignore-cert",
        "cert-tofu", "cert-fingerprints", "disable-auth", "remote-app", "remote-app-dir",
        "remote-app-args", "static-channels", "client-name", "enable-wallpaper", "enable-theming",
        "enable-font-smoothing", "enable-full-window-drag", "enable-desktop-composition",
        "enable-menu-animations", "disable-bitmap-caching", "disable-offscreen-caching",
        "disable-glyph-caching", "disable-gfx", "preconnection-id", "preconnection-blob", "timezone",
        *_SFTP, *_RECORDING[:4], "recording-exclude-touch", *_RECORDING[4:], "resize-method",
        "enable-audio-input", "enable-touch", "read-only", "gateway-hostname", "gateway-port",
        "gateway-domain", "gateway-username", "gateway-password", "load-balance-info", "disable-copy",
        "disable-paste", *_WOL, "force-lossless", "normalize-clipboard",
    ),
    "telnet": (
        "hostname", "port", "timeout", "username", "username-regex", "password", "password-regex",
        "font-name", "font-size", "color-scheme", *_TYPESCRIPT, *_RECORDING, "read-only", "backspace",
        "terminal-type", "scrollback", "login-success-regex", "login-failure-regex", "disable-copy",
        "disable-paste", *_WOL,
    ),
}

# Guacamole status codes the double sends (libguac protocol-types.h).
STATUS_RESOURCE_NOT_FOUND = 0x0204
STATUS_CLIENT_BAD_REQUEST = 0x0300
STATUS_CLIENT_TIMEOUT = 0x0308
BLOB_MAX_BYTES = 6048  # GUAC_PROTOCOL_BLOB_MAX_LENGTH: 8064 base64 characters per `blob`
_VERSION = re.compile(r"^VERSION_\d+_\d+_\d+$")
_OPTIONAL = ("timezone", "name")

Instruction = tuple[str, tuple[str, ...]]


# --- framing (independent of tunnel.protocol) ----------------------------------------------------------


def encode(opcode: str, *args: object) -> str:
    """`LENGTH.VALUE,...;` with lengths in code points (Python str length)."""
    return ",".join(f"{len(value)}.{value}" for value in (opcode, *map(str, args))) + ";"


class Decoder:
    """Whole instructions out of a byte stream; raises ValueError on anything that is not the protocol."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""

    def feed(self, data: bytes) -> list[Instruction]:
        self._text += self._utf8.decode(data)
        found = []
        while (parsed := self._take()) is not None:
            found.append(parsed)
        return found

    def _take(self) -> Instruction | None:
        elements: list[str] = []
        position = 0
        while True:
            dot = self._text.find(".", position)
            if dot < 0:
                return None
            digits = self._text[position:dot]
            if not (digits.isascii() and digits.isdigit()):
                raise ValueError(f"bad length {digits[:20]!r}")
            end = dot + 1 + int(digits)
            if end >= len(self._text):
                return None
            elements.append(self._text[dot + 1:end])
            position = end + 1
            if self._text[end] == ";":
                self._text = self._text[position:]
                return elements[0], tuple(elements[1:])
            if self._text[end] != ",":
                raise ValueError(f"element followed by {self._text[end]!r}")


# --- a frame: a solid PNG ------------------------------------------------------------------------------


def solid_png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    """A width x height PNG of one RGB colour, built with zlib and struct."""
    row = b"\x00" + bytes(color) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(row * height)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def frame_instructions(stream: int, png: bytes, width: int, height: int) -> str:
    """`size`, `img`, the PNG in `blob`s of at most 6048 bytes, `end` (what guacd sends for a full frame)."""
    parts = [encode("size", 0, width, height), encode("img", stream, 14, 0, "image/png", 0, 0)]
    for offset in range(0, len(png), BLOB_MAX_BYTES):
        parts.append(encode("blob", stream, base64.b64encode(png[offset:offset + BLOB_MAX_BYTES]).decode()))
    parts.append(encode("end", stream))
    return "".join(parts)


def now_ms() -> int:
    return int(time.time() * 1000)


# --- what the double records ---------------------------------------------------------------------------


@dataclass
class ConnectionRecord:
    """One client socket. `id` is the guacd connection id sent in `ready` (shared by the users joined to
    it); `user_id` is this socket's own. Lists only grow; read them after `GuacdDouble.wait_for`."""

    user_id: str
    id: str = ""
    protocol: str = ""
    joined: bool = False
    handshake: list[Instruction] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    client_version: str = ""
    ready: bool = False
    received: list[Instruction] = field(default_factory=list)
    syncs_sent: list[str] = field(default_factory=list)
    sync_replies: list[str] = field(default_factory=list)
    errors_sent: list[tuple[str, int]] = field(default_factory=list)
    clean_disconnect: bool = False
    dropped_for_silence: bool = False
    killed: bool = False
    closed: bool = False


class _User:
    """The double's side of one socket: its record, writer and decoder."""

    def __init__(self, record: ConnectionRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.record = record
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder()
        self.pending: list[Instruction] = []


class _Refused(Exception):
    """End the handshake with `error,<message>,<status>;` (status None: just close, as guacd does)."""

    def __init__(self, message: str, status: int | None = STATUS_CLIENT_BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


# --- the double ----------------------------------------------------------------------------------------


class GuacdDouble:
    """A fake guacd on 127.0.0.1:<free port>, run in its own thread; see the module docstring."""

    def __init__(
        self,
        sync_interval: float = 1.0,
        silence_timeout: float = 15.0,
        frame_color: tuple[int, int, int] = (200, 30, 30),
        frame_size: tuple[int, int] = (640, 480),
        version: str | None = "VERSION_1_5_0",
        title: str | None = None,
        fail_connect: tuple[str, int] | None = None,
        silent_sessions: int = 0,
    ) -> None:
        self.sync_interval = sync_interval
        self.silence_timeout = silence_timeout
        self.frame_color = frame_color
        self.frame_size = frame_size
        self.version = version  # None: announce no version at all, like guacd before 1.1
        self.title = title
        self.fail_connect = fail_connect  # answer `connect` with this error instead of `ready`
        # The first N sessions get `ready` and then nothing, never a frame: what guacd 1.6.0 sometimes does
        # when it cannot reach the lab's VNC server (seen 1 time in 4 on a slow VM).
        self.silent_sessions = silent_sessions
        self.png = solid_png(*frame_size, frame_color)
        self._records: list[ConnectionRecord] = []
        self._users: dict[str, _User] = {}
        self._condition = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    # lifecycle

    def start(self) -> GuacdDouble:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="guacd-double", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the guacd double did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> GuacdDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, started: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.address = self._server.sockets[0].getsockname()[:2]
        started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # test hooks (call from the test's thread)

    @property
    def connections(self) -> list[ConnectionRecord]:
        with self._condition:
            return list(self._records)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Block until `predicate()` is true (re-checked whenever the double records something)."""
        with self._condition:
            if not self._condition.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout} s; connections: {self._records}")

    def wait_for_connection(self, index: int = 0, timeout: float = 5.0) -> ConnectionRecord:
        """The index-th connection once its handshake is complete."""
        self.wait_for(lambda: len(self._records) > index and self._records[index].ready, timeout)
        return self._records[index]

    def send(self, target: str, raw: str) -> None:
        """Push raw protocol text to every user of connection `target` (a `$...` id) or to one `@...` user."""
        self._call(self._send_to(target, raw))

    def send_blob(self, target: str, size: int, stream: int = 1) -> str:
        """Push one `blob` whose base64 value is `size` characters long; returns that value."""
        value = base64.b64encode(bytes(range(256)) * (size // 192 + 1)).decode()[:size]
        self.send(target, encode("blob", stream, value))
        return value

    def kill(self, target: str) -> None:
        """Close the socket(s) of `target` abruptly: no `error`, no `disconnect`."""
        self._call(self._kill(target))

    def _call(self, coroutine: object) -> None:
        assert self._loop is not None, "the double is not running"
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    def _targets(self, target: str) -> list[_User]:
        users = [user for user in self._users.values() if target in (user.record.id, user.record.user_id)]
        if not users:
            raise KeyError(f"no live connection {target!r}")
        return users

    async def _send_to(self, target: str, raw: str) -> None:
        for user in self._targets(target):
            user.writer.write(raw.encode())
            await user.writer.drain()

    async def _kill(self, target: str) -> None:
        for user in self._targets(target):
            self._update(user.record, killed=True)
            user.writer.transport.abort()

    def _update(self, record: ConnectionRecord, **changes: object) -> None:
        with self._condition:
            for name, value in changes.items():
                setattr(record, name, value)
            self._condition.notify_all()

    def _append(self, items: list[object], item: object) -> None:
        with self._condition:
            items.append(item)
            self._condition.notify_all()

    # one client socket

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = ConnectionRecord(user_id="@" + str(uuid.uuid4()))
        user = _User(record, reader, writer)
        self._append(self._records, record)  # type: ignore[arg-type]
        try:
            await self._session(user)
        except (asyncio.CancelledError, ConnectionError, ValueError):
            pass
        finally:
            self._users.pop(record.user_id, None)
            writer.close()
            self._update(record, closed=True)
            self._tasks.discard(task)

    async def _session(self, user: _User) -> None:
        try:
            await self._handshake(user)
        except _Refused as refused:
            if refused.status is not None:
                await self._error(user, str(refused), refused.status)
            return
        except (TimeoutError, asyncio.TimeoutError, EOFError):
            return
        self._users[user.record.user_id] = user
        self._update(user.record, ready=True)
        if self.silent_sessions > 0:
            self.silent_sessions -= 1
            await self._write(user, encode("ready", user.record.id))
            await self._listen(user)
            return
        await self._first_frame(user)
        ticker = asyncio.create_task(self._tick(user))
        try:
            await self._listen(user)
        finally:
            ticker.cancel()

    async def _handshake(self, user: _User) -> None:
        record = user.record
        select = await self._expect(user, ("select",))
        target = select[1][0] if len(select[1]) == 1 else ""
        record.protocol, record.id, record.joined = self._resolve(target)
        announced = ARGS[record.protocol]
        await self._write(user, encode("args", *([self.version] if self.version else []), *announced))
        for step in ("size", "audio", "video", "image"):
            await self._expect(user, (step,))
        expected = (*_OPTIONAL, "connect")
        while True:  # timezone and name are optional, in that order
            opcode, values = await self._expect(user, expected)
            if opcode == "connect":
                break
            expected = expected[expected.index(opcode) + 1:]
        self._check_connect(record, values, announced)
        if self.fail_connect:
            raise _Refused(*self.fail_connect)

    def _resolve(self, target: str) -> tuple[str, str, bool]:
        """(protocol, connection id, joined) for `select`'s value."""
        if target.startswith("$"):
            for other in self._users.values():
                if other.record.id == target:
                    return other.record.protocol, target, True
            raise _Refused("No such connection.", STATUS_RESOURCE_NOT_FOUND)
        if target not in ARGS:
            raise _Refused(f"unsupported protocol {target!r}", None)  # guacd just closes
        return target, "$" + str(uuid.uuid4()), False

    def _check_connect(self, record: ConnectionRecord, values: tuple[str, ...], announced: tuple[str, ...]) -> None:
        if not values or not _VERSION.match(values[0]):
            raise _Refused(f"connect must begin with a protocol version, got {values[:1]!r}")
        if len(values) - 1 != len(announced):
            raise _Refused(f"connect has {len(values) - 1} values for {len(announced)} arguments")
        self._update(record, client_version=values[0], params=dict(zip(announced, values[1:])))

    async def _expect(self, user: _User, allowed: tuple[str, ...]) -> Instruction:
        """The next instruction of the handshake, recorded; anything else refuses the client."""
        instruction = await self._read(user, self.silence_timeout)
        if instruction is None:
            raise EOFError
        self._append(user.record.handshake, instruction)  # type: ignore[arg-type]
        if instruction[0] not in allowed:
            raise _Refused(f"expected {' or '.join(allowed)} during the handshake, got {instruction[0]!r}")
        return instruction

    async def _read(self, user: _User, timeout: float) -> Instruction | None:
        """One instruction, None at end of stream; TimeoutError after `timeout` s of silence."""
        while not user.pending:
            data = await asyncio.wait_for(user.reader.read(65536), timeout)
            if not data:
                return None
            user.pending.extend(user.decoder.feed(data))
        return user.pending.pop(0)

    async def _write(self, user: _User, raw: str) -> None:
        user.writer.write(raw.encode())
        await user.writer.drain()

    async def _error(self, user: _User, message: str, status: int) -> None:
        self._append(user.record.errors_sent, (message, status))  # type: ignore[arg-type]
        await self._write(user, encode("error", message, status))

    async def _first_frame(self, user: _User) -> None:
        """`ready`, then the title and a whole frame, in one write: a client must handle what shares a read
        with `ready` (guacd flushes them separately, but TCP may deliver them together)."""
        title = encode("name", self.title) if self.title is not None else ""
        timestamp = str(now_ms())
        self._append(user.record.syncs_sent, timestamp)  # type: ignore[arg-type]
        frame = frame_instructions(1, self.png, *self.frame_size)
        await self._write(user, encode("ready", user.record.id) + title + frame + encode("sync", timestamp))

    async def _sync(self, user: _User) -> None:
        timestamp = str(now_ms())
        self._append(user.record.syncs_sent, timestamp)  # type: ignore[arg-type]
        await self._write(user, encode("sync", timestamp))

    async def _tick(self, user: _User) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            await self._sync(user)

    async def _listen(self, user: _User) -> None:
        """Record what the client sends; end on `disconnect`, end of stream, or silence (guacd's rule)."""
        record = user.record
        while True:
            try:
                instruction = await self._read(user, self.silence_timeout)
            except (TimeoutError, asyncio.TimeoutError):
                self._update(record, dropped_for_silence=True)
                await self._error(user, "User is not responding.", STATUS_CLIENT_TIMEOUT)
                await self._write(user, encode("disconnect"))
                return
            if instruction is None:
                return
            opcode, args = instruction
            if opcode == "disconnect":
                self._update(record, clean_disconnect=True)
                return
            if opcode == "sync":
                self._append(record.sync_replies, args[0] if args else "")  # type: ignore[arg-type]
            else:
                self._append(record.received, instruction)  # type: ignore[arg-type]


@contextmanager
def guacd_doubles() -> Iterator[Callable[..., GuacdDouble]]:
    """A factory for started doubles (keyword arguments as `GuacdDouble`); all are stopped on exit.
    Meant as a pytest fixture's body: `with guacd_doubles() as start: yield start`."""
    started: list[GuacdDouble] = []

    def start(**options: object) -> GuacdDouble:
        double = GuacdDouble(**options).start()  # type: ignore[arg-type]
        started.append(double)
        return double

    try:
        yield start
    finally:
        for double in started:
            double.stop()
