"""Instruction framing: `LENGTH.VALUE,...;` read on length prefixes across arbitrary TCP reads."""

from __future__ import annotations

import re
import socket

import pytest
from guacamole.client import GuacamoleClient
from guacamole.exceptions import InvalidInstruction
from guacamole.instruction import GuacamoleInstruction

from tests.support.guacd_double import GuacdDouble
from tunnel.guacd import ClientInfo, handshake_messages
from tunnel.protocol import InstructionReader, ProtocolError, encode, parse_one

AWKWARD = "Lab 1; step 2, v3.1 — ü日🖥"  # separators plus 2-, 3- and 4-byte UTF-8


def test_encode_counts_code_points_not_bytes_or_utf16_units() -> None:
    assert encode("name", "ü") == "4.name,1.ü;"  # 2 bytes in UTF-8
    assert encode("name", "日本") == "4.name,2.日本;"  # 6 bytes
    assert encode("name", "🖥") == "4.name,1.🖥;"  # 4 bytes, 2 UTF-16 units
    assert encode("size", 0, 1024, 768) == "4.size,1.0,4.1024,3.768;"
    assert encode("audio") == "5.audio;"
    assert encode("key", "") == "3.key,0.;"


@pytest.mark.parametrize(
    "opcode, args",
    [
        ("sync", ("1700000000000",)),
        ("audio", ()),
        ("name", (AWKWARD,)),
        ("clipboard", ("", ";", ",", ".", ";;,,..", "0.;")),
        ("blob", ("1", "A" * 5000)),
    ],
)
def test_encode_and_read_round_trip(opcode: str, args: tuple[str, ...]) -> None:
    wire = encode(opcode, *args)
    parsed = InstructionReader().feed(wire.encode())
    assert [(p.opcode, p.args, p.raw) for p in parsed] == [(opcode, args, wire)]
    assert parse_one(wire).args == args


def test_values_with_separators_are_read_on_their_length_prefixes() -> None:
    parsed = parse_one("4.name,11.a;b,c.d;e,f;")
    assert parsed.args == ("a;b,c.d;e,f",)


def test_multibyte_utf8_split_at_every_byte_boundary() -> None:
    wire = (encode("name", AWKWARD) + encode("clipboard", "é€𝄞", "") + encode("sync", "42")).encode()
    expected = [("name", (AWKWARD,)), ("clipboard", ("é€𝄞", "")), ("sync", ("42",))]
    assert len(wire) > len(wire.decode())  # there really are multibyte characters in there
    for cut in range(1, len(wire)):
        reader = InstructionReader()
        parsed = reader.feed(wire[:cut]) + reader.feed(wire[cut:])
        assert [(p.opcode, p.args) for p in parsed] == expected, f"cut at byte {cut}"
        assert not reader.pending
    reader = InstructionReader()
    one_by_one = [p for index in range(len(wire)) for p in reader.feed(wire[index:index + 1])]
    assert [(p.opcode, p.args) for p in one_by_one] == expected


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_100_kb_blob_in_pieces_is_one_instruction(piece: int) -> None:
    value = ("QUJD" * 25_000)[:100_000]
    blob = encode("blob", 3, value)
    wire = (blob + encode("end", 3)).encode()
    reader = InstructionReader()
    parsed = []
    for offset in range(0, len(wire), piece):
        found = reader.feed(wire[offset:offset + piece])
        if offset + piece < len(blob):
            assert found == [], "nothing may come out before the blob is complete"
        parsed += found
    assert [p.opcode for p in parsed] == ["blob", "end"]
    assert parsed[0].args == ("3", value)
    assert not reader.pending


def test_several_instructions_in_one_read_come_out_in_order_and_a_tail_waits() -> None:
    reader = InstructionReader()
    parsed = reader.feed(b"4.sync,2.10;3.key,5.65307,1.1;5.mouse,2.10,2.20,1.1;4.sync,2.1")
    assert [(p.opcode, p.args) for p in parsed] == [
        ("sync", ("10",)),
        ("key", ("65307", "1")),
        ("mouse", ("10", "20", "1")),
    ]
    assert reader.pending
    assert [(p.opcode, p.args) for p in reader.feed(b"1;")] == [("sync", ("11",))]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"abc;", "bad length prefix 'abc;'"),
        (b"4.sync,x.1;", "bad length prefix 'x'"),
        (b"2.ab:", "followed by ':'"),
        (b"4.sync,2.10.", "followed by '.'"),
        (b"123456789.x;", "bad length prefix '123456789'"),
        (b"123456789", "bad length prefix"),  # refused before the dot arrives
        ("².a;".encode(), "bad length prefix"),  # a Unicode digit is not a length
        ("١.a;".encode(), "bad length prefix"),
        (b"4.name,1.\xff;", "not UTF-8"),
    ],
)
def test_bad_input_raises_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        InstructionReader().feed(data)


def test_an_incomplete_instruction_is_not_one_instruction() -> None:
    reader = InstructionReader()
    assert reader.feed(b"4.ab;") == [] and reader.pending  # `ab;` + more may still come
    with pytest.raises(ProtocolError, match="expected one whole instruction"):
        parse_one("4.ab;")
    with pytest.raises(ProtocolError, match="expected one whole instruction"):
        parse_one("4.sync,1.1;4.sync,1.2;")


def test_pyguacamole_breaks_on_a_semicolon_in_a_value_where_our_reader_does_not() -> None:
    """Why LabDesk does not use pyguacamole's reader: `GuacamoleClient.receive` cuts at the first `;`, so
    `GuacamoleInstruction.load` gets a truncated instruction. (Given one whole instruction, `load` itself
    respects the lengths, but it cannot take a stream.) Real TCP, against the double."""
    title = "Report; draft"
    with GuacdDouble(title=title) as guacd:
        client = GuacamoleClient(*guacd.address, timeout=5)
        client.send_instruction(GuacamoleInstruction("select", "vnc"))
        args = client.read_instruction()
        _, rest = handshake_messages(tuple(args.args), {}, ClientInfo())
        client.send(rest)
        assert client.read_instruction().opcode == "ready"
        with pytest.raises(InvalidInstruction):
            client.read_instruction()  # the `name` instruction, cut at "Report;"
        client.close()

        with socket.create_connection(guacd.address, timeout=5) as raw:
            raw.sendall(encode("select", "vnc").encode())
            reader = InstructionReader()
            names = _read_until(raw, reader, "args")[-1].args
            raw.sendall(handshake_messages(names, {}, ClientInfo())[1].encode())
            names_seen = [p.args for p in _read_until(raw, reader, "sync") if p.opcode == "name"]
    assert names_seen == [(title,)]
    assert GuacamoleInstruction.load(encode("name", title)).args == (title,)
    with pytest.raises(InvalidInstruction):
        GuacamoleInstruction.load(encode("name", title) + encode("sync", "1"))


def _read_until(raw: socket.socket, reader: InstructionReader, opcode: str) -> list:
    seen = []
    while not seen or seen[-1].opcode != opcode:
        data = raw.recv(65536)
        assert data, f"closed before {opcode!r}"
        for instruction in reader.feed(data):
            if not seen or seen[-1].opcode != opcode:
                seen.append(instruction)
    return seen
