"""The guacd double itself: its argument lists, its first frame, its strictness and its test hooks.

Read through raw sockets with LabDesk's InstructionReader (the double frames with its own code, so each
codec checks the other)."""

from __future__ import annotations

import base64
import json
import socket
import struct
import zlib
from pathlib import Path
from typing import Callable

import pytest

from tests.support.guacd_double import ARGS, GuacdDouble, encode
from tunnel.protocol import Instruction, InstructionReader

ARGS_FROM_A_REAL_BUILD = Path("/opt/guacd/args-lists.json")  # written from a guacd 1.6.0 built from source


class Raw:
    """A client socket that sends text and reads whole instructions."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.socket = socket.create_connection(address, timeout=5)
        self.reader = InstructionReader()
        self.backlog: list[Instruction] = []

    def send(self, *instructions: str) -> None:
        self.socket.sendall("".join(instructions).encode())

    def until(self, opcode: str) -> list[Instruction]:
        seen: list[Instruction] = []
        while not seen or seen[-1].opcode != opcode:
            if not self.backlog:
                data = self.socket.recv(65536)
                assert data, f"closed before {opcode!r}; saw {[i.opcode for i in seen]}"
                self.backlog = self.reader.feed(data)
            else:
                seen.append(self.backlog.pop(0))
        return seen

    def handshake(self, protocol: str = "vnc", version: str = "VERSION_1_5_0", **params: str) -> str:
        self.send(encode("select", protocol))
        names = self.until("args")[-1].args[1:]
        values = [params.get(name, "") for name in names]
        self.send(encode("size", 800, 600, 96), encode("audio"), encode("video"), encode("image", "image/png"),
                  encode("connect", version, *values))
        return self.until("ready")[-1].args[0]


@pytest.mark.skipif(not ARGS_FROM_A_REAL_BUILD.exists(), reason="no argument lists from a real guacd build")
def test_argument_lists_match_a_real_guacd_build() -> None:
    real = json.loads(ARGS_FROM_A_REAL_BUILD.read_text())
    assert {protocol: list(names) for protocol, names in ARGS.items()} == {
        protocol: names[1:] for protocol, names in real.items() if protocol in ARGS
    }


def test_args_announce_the_version_then_the_protocols_names(guacd_double: GuacdDouble) -> None:
    raw = Raw(guacd_double.address)
    raw.send(encode("select", "ssh"))
    args = raw.until("args")[-1].args
    assert args[0] == "VERSION_1_5_0"
    assert args[1:7] == ("hostname", "host-key", "port", "timeout", "username", "password")


def _png_pixels(png: bytes) -> tuple[int, int, set[bytes]]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    idat_length = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    rows = zlib.decompress(png[41:41 + idat_length])
    stride = 1 + 3 * width
    pixels = {rows[y * stride + 1 + 3 * x:y * stride + 4 + 3 * x] for y in range(0, height, 7) for x in range(0, width, 5)}
    return width, height, pixels


def test_the_first_frame_is_a_solid_png_in_blobs(start_guacd_double: Callable[..., GuacdDouble]) -> None:
    guacd = start_guacd_double(frame_color=(10, 200, 40), frame_size=(1500, 900))
    raw = Raw(guacd.address)
    raw.handshake(hostname="h")
    frame = raw.until("sync")
    assert frame[0].args == ("0", "1500", "900") and frame[0].opcode == "size"
    stream, mask, layer, mimetype, x, y = frame[1].args
    assert (frame[1].opcode, mask, layer, mimetype, x, y) == ("img", "14", "0", "image/png", "0", "0")
    blobs = [i for i in frame if i.opcode == "blob"]
    assert len(blobs) >= 2 and all(i.args[0] == stream and len(i.args[1]) <= 8192 for i in blobs)
    assert frame[-2].opcode == "end" and frame[-2].args == (stream,)
    png = b"".join(base64.b64decode(i.args[1]) for i in blobs)
    assert _png_pixels(png) == (1500, 900, {bytes((10, 200, 40))})


@pytest.mark.parametrize(
    "after_args, error",
    [
        ([encode("audio")], "expected size"),
        ([encode("size", 1, 1, 96), encode("audio"), encode("video"), encode("image"), encode("connect", "")],
         "protocol version"),
        ([encode("size", 1, 1, 96), encode("audio"), encode("video"), encode("image"), encode("connect", "VERSION_1_5_0", "h")],
         "1 values for 51 arguments"),
        ([encode("size", 1, 1, 96), encode("audio"), encode("video"), encode("image"), encode("name", "x"),
          encode("timezone", "UTC")], "expected connect"),
    ],
)
def test_a_handshake_out_of_order_is_refused(guacd_double: GuacdDouble, after_args: list[str], error: str) -> None:
    raw = Raw(guacd_double.address)
    raw.send(encode("select", "vnc"))
    raw.until("args")
    raw.send(*after_args)
    refusal = raw.until("error")[-1]
    assert error in refusal.args[0] and refusal.args[1] == "768"
    guacd_double.wait_for(lambda: guacd_double.connections[0].closed)


def test_hooks_record_input_push_instructions_and_kill(guacd_double: GuacdDouble) -> None:
    raw = Raw(guacd_double.address)
    connection_id = raw.handshake(hostname="h")
    raw.until("sync")  # the first frame
    raw.send(encode("key", 65307, 1), encode("mouse", 10, 20, 1), encode("size", 1024, 700),
             encode("clipboard", 2, "text/plain"), encode("blob", 2, "aGk="), encode("end", 2))
    record = guacd_double.wait_for_connection()
    guacd_double.wait_for(lambda: len(record.received) == 6)
    assert record.received[:3] == [("key", ("65307", "1")), ("mouse", ("10", "20", "1")), ("size", ("1024", "700"))]

    guacd_double.send(connection_id, encode("name", "pushed;title"))
    value = guacd_double.send_blob(connection_id, 100_000)
    seen = raw.until("blob")
    assert ("name", ("pushed;title",)) in [(i.opcode, i.args) for i in seen]
    assert len(value) == 100_000 and seen[-1].args == ("1", value)

    guacd_double.kill(connection_id)
    guacd_double.wait_for(lambda: record.closed)
    assert record.killed and not record.clean_disconnect
