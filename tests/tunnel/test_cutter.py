"""The relay's byte-level cutter: whole instructions out, exactly as they came in, whatever the TCP split."""

from __future__ import annotations

import random

import pytest

from tests.support.guacd_double import Decoder, encode
from tunnel.protocol import InstructionCutter, ProtocolError

STREAM = "".join([
    encode("size", 0, 1024, 768),
    encode("img", 1, 14, 0, "image/png", 0, 0),
    encode("blob", 1, "QUJD" * 5000),
    encode("end", 1),
    encode("name", "Terminal; a.b,c — Überprüfung 日本 🎓"),
    encode("clipboard", 2, "text/plain"),
    encode("sync", 1795316095129),
    encode("disconnect"),
])


@pytest.mark.parametrize("seed", range(20))
def test_any_split_yields_whole_instructions_byte_for_byte(seed: int) -> None:
    data = STREAM.encode()
    chunks, position, rng = [], 0, random.Random(seed)
    while position < len(data):
        step = rng.choice([1, 2, 3, 7, 100, 4096, 70000])
        chunks.append(data[position:position + step])
        position += step
    cutter, out, opcodes = InstructionCutter(), [], []
    for chunk in chunks:
        complete, names = cutter.feed(chunk)
        if complete:
            decoder = Decoder()
            decoder.feed(complete)
            assert decoder._text == "", "every piece sent on ends exactly after an instruction"
            out.append(complete)
        opcodes += names
    assert b"".join(out) == data
    assert opcodes == ["size", "img", "blob", "end", "name", "clipboard", "sync", "disconnect"]


def test_a_stream_handed_over_mid_instruction_continues() -> None:
    data = STREAM.encode()
    cutter = InstructionCutter(data[:10])
    complete, names = cutter.feed(data[10:])
    assert complete == data and names[0] == "size"


@pytest.mark.parametrize("bad", [b"abc;", b"2.abc;", b"4.size.1.0;", b"123456789.x;", b"4.siz\xff;"])
def test_broken_streams_are_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        InstructionCutter().feed(bad)
