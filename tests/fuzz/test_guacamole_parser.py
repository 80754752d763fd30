"""Fuzzing the Guacamole instruction parsers: what the tunnel reads from browsers and from guacd.

Whatever bytes arrive, the reader and the relay's cutter give whole instructions or a `ProtocolError`
(which ends that one session cleanly), never another exception; what LabDesk encodes reads back the same
however the stream is cut; and a peer that announces more than `MAX_INSTRUCTION` characters is refused
when it says so, before anything is buffered. guacd's handshake replies are fuzzed over real TCP.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.conftest import fuzz_settings
from tests.support.guacd_double import GuacdDouble
from tunnel.guacd import ClientInfo, HandshakeError, connect
from tunnel.relay import Ended, relay
from tunnel.server import client_info
from tunnel.protocol import (
    MAX_ELEMENT,
    MAX_INSTRUCTION,
    Instruction,
    InstructionCutter,
    InstructionReader,
    ProtocolError,
    encode,
    parse_one,
)

# Any character Guacamole may carry (no lone surrogates: they cannot be UTF-8), with its separators,
# digits and astral-plane characters (one code point, two UTF-16 units, four UTF-8 bytes) made common.
AWKWARD = st.sampled_from([";", ",", ".", "0", "9", "1.", "🖥", "𝄞", "😀", "ü", "日", "\x00", "\n", " "])
VALUES = st.lists(st.one_of(st.characters(exclude_categories=("Cs",)), AWKWARD), max_size=40).map("".join)
INSTRUCTIONS = st.lists(st.tuples(VALUES, st.lists(VALUES, max_size=6)), min_size=1, max_size=8)


def wire_of(instructions: list[tuple[str, list[str]]]) -> str:
    return "".join(encode(opcode, *args) for opcode, args in instructions)


def read_all(reader: InstructionReader, pieces: list[bytes]) -> list[Instruction]:
    return [found for piece in pieces for found in reader.feed(piece)]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` split at `points` (positions in bytes, so inside multibyte characters too)."""
    edges = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:])]


# -- any input: instructions or ProtocolError -----------------------------------------------------------
@fuzz_settings()
@given(st.lists(st.binary(max_size=64), max_size=8))
@example([b"4.sync,99999999999."])
@example([b"0.;", b"\xf0\x9f", b"\x96\xa5"])
def test_any_bytes_give_instructions_or_a_protocol_error(pieces: list[bytes]) -> None:
    reader, cutter = InstructionReader(), InstructionCutter()
    try:
        for instruction in read_all(reader, pieces):
            assert instruction.raw == encode(instruction.opcode, *instruction.args)
    except ProtocolError:
        pass
    try:
        for piece in pieces:
            complete, opcodes = cutter.feed(piece)
            assert len(read_all(InstructionReader(), [complete])) == len(opcodes)
    except ProtocolError:
        pass


@fuzz_settings()
@given(st.text(max_size=200))
@example("²³.abc;")  # Unicode digits are not a length
@example("1.a,1")
def test_any_text_is_one_instruction_or_a_protocol_error(text: str) -> None:
    try:
        instruction = parse_one(text)
    except ProtocolError:
        return
    assert instruction.raw == text


@fuzz_settings()
@given(INSTRUCTIONS, st.data())
def test_a_mutated_stream_gives_instructions_or_a_protocol_error(instructions, data: st.DataObject) -> None:
    """Lying length prefixes, a separator swapped, bytes dropped: near-valid input reaches deeper."""
    wire = bytearray(wire_of(instructions).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire)))
        action = data.draw(st.sampled_from(["insert", "replace", "delete"]))
        byte = data.draw(st.sampled_from(list(b"0123456789.,;-+ ") + [0xFF, 0xF0, 0x80]))
        if action == "insert":
            wire[position:position] = bytes([byte])
        elif position < len(wire):
            wire[position:position + 1] = b"" if action == "delete" else bytes([byte])
    pieces = cut(bytes(wire), data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    for parser in (lambda: read_all(InstructionReader(), pieces), lambda: [InstructionCutter().feed(p) for p in pieces]):
        try:
            parser()
        except ProtocolError:
            pass


# -- round trip -----------------------------------------------------------------------------------------
@fuzz_settings()
@given(INSTRUCTIONS)
@example([("name", ["Lab 1; step 2, v3.1 🖥"]), ("", ["ping", "1700000000000"])])
@example([("clipboard", ["", "0.;", ";;,,..", "😀" * 3])])
def test_encoding_then_reading_gives_the_instructions_back(instructions) -> None:
    wire = wire_of(instructions)
    parsed = InstructionReader().feed(wire.encode())
    assert [(p.opcode, list(p.args)) for p in parsed] == instructions
    assert "".join(p.raw for p in parsed) == wire
    for (opcode, args), instruction in zip(instructions, parsed):
        assert parse_one(instruction.raw).args == tuple(args)
        # Guacamole counts code points: an astral character is one, not two UTF-16 units nor four bytes
        assert instruction.raw.startswith(f"{len(opcode)}.{opcode}")


@fuzz_settings()
@given(INSTRUCTIONS, st.lists(st.integers(min_value=0), max_size=12))
@example([("name", ["🖥"]), ("sync", ["1"])], [9, 10, 11])  # inside the 4-byte character
def test_a_stream_cut_anywhere_reads_as_the_whole(instructions, points: list[int]) -> None:
    data = wire_of(instructions).encode()
    pieces = cut(data, points)
    reader = InstructionReader()
    assert read_all(reader, pieces) == InstructionReader().feed(data)
    assert not reader.pending
    cutter = InstructionCutter()
    forwarded, opcodes = b"", []
    for piece in pieces:
        complete, found = cutter.feed(piece)
        forwarded += complete
        opcodes += found
    assert forwarded == data, "the relay forwards every whole instruction byte for byte"
    assert opcodes == [opcode for opcode, _ in instructions]


@fuzz_settings()
@given(INSTRUCTIONS, st.integers(min_value=1))
def test_a_truncated_stream_waits_and_yields_only_whole_instructions(instructions, at: int) -> None:
    data = wire_of(instructions).encode()
    head = data[:at % len(data)]
    reader = InstructionReader()
    parsed = reader.feed(head)
    assert parsed == InstructionReader().feed(data)[:len(parsed)]
    assert reader.pending == (len(head) > len("".join(p.raw for p in parsed).encode()))
    complete, _ = InstructionCutter().feed(head)
    assert data.startswith(complete) and len(read_all(InstructionReader(), [complete])) == len(parsed)


# -- lying and huge lengths: refused when announced, memory bounded -------------------------------------
@pytest.mark.parametrize("prefix", [b"-1.", b"+1.", b" 1.", b"1 .", b"0x1.", b"1e3.", b"\xd9\xa1.", b"123456789"])
def test_a_length_that_is_not_plain_digits_is_refused(prefix: bytes) -> None:
    for parser in (InstructionReader().feed, InstructionCutter().feed):
        with pytest.raises(ProtocolError, match="bad length prefix|not UTF-8"):
            parser(b"4.sync," + prefix + b"x;")


@pytest.mark.parametrize("text", ["4.sync,1.10;", "4.sync,3.1;", "4.sync,1.1", "4.sync,1.1,"])
def test_a_lying_or_unterminated_length_is_never_an_instruction(text: str) -> None:
    reader = InstructionReader()
    try:
        assert reader.feed(text.encode()) == [] and reader.pending
    except ProtocolError:
        pass
    with pytest.raises(ProtocolError):
        parse_one(text)


@pytest.mark.parametrize("parser", [lambda: InstructionReader().feed, lambda: InstructionCutter().feed], ids=["reader", "cutter"])
def test_an_element_longer_than_the_limit_is_refused_before_its_data(parser) -> None:
    with pytest.raises(ProtocolError, match="too long"):
        parser()(f"4.blob,{MAX_ELEMENT + 1}.".encode())


@pytest.mark.parametrize("parser", [lambda: InstructionReader().feed, lambda: InstructionCutter().feed], ids=["reader", "cutter"])
def test_an_instruction_of_many_elements_is_bounded_as_a_whole(parser) -> None:
    """Each element under MAX_ELEMENT, but together more than MAX_INSTRUCTION: refused at the prefix
    that would cross the limit, so a peer cannot make the tunnel buffer without end."""
    feed = parser()
    half = MAX_INSTRUCTION // 2
    assert feed(f"4.blob,{half}.".encode() + b"A" * half) in ([], (b"", []))  # nothing whole yet
    with pytest.raises(ProtocolError, match="too long"):
        feed(f",{half}.".encode())


def test_the_largest_instruction_allowed_still_reads() -> None:
    value = "A" * (MAX_INSTRUCTION - len("4.blob,;") - len(str(MAX_INSTRUCTION)) - 1)
    wire = encode("blob", value).encode()
    assert len(wire) == MAX_INSTRUCTION
    assert InstructionReader().feed(wire)[0].args == (value,)
    assert InstructionCutter().feed(wire) == (wire, ["blob"])


# -- guacd's handshake replies, over real TCP -----------------------------------------------------------
@fuzz_settings(0.5)
@given(st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(st.sampled_from(["args", "error", "ready", "sync", "x"]), st.lists(VALUES, max_size=4)), max_size=4)
    .map(lambda found: wire_of(found).encode()),
))
@example(encode("error", "refused", "²").encode())  # a Unicode digit is not a status code
@example(encode("args", "VERSION_1_5_0", "hostname").encode() + encode("error", "no", "١٢").encode())
@example(encode("args").encode() + encode("ready").encode())
def test_whatever_guacd_answers_the_handshake_ends_in_a_connection_or_a_handshake_error(reply: bytes) -> None:
    asyncio.run(_handshake_against(reply))


async def _handshake_against(reply: bytes) -> None:
    async def guacd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # `select`
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(guacd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connection = await connect(("127.0.0.1", port), "vnc", {}, ClientInfo(), timeout=5)
    except HandshakeError as refused:
        assert isinstance(refused.status, int)
    else:
        assert connection.version == "VERSION_1_5_0"
        connection.writer.close()
    finally:
        server.close()
        await server.wait_closed()


# -- the relay: a browser frame that is not UTF-8 -------------------------------------------------------
class _BinaryBrowser:
    """The two calls the relay makes on a browser's WebSocket; this one sends one binary frame."""

    def __init__(self, frame: bytes) -> None:
        self.frames, self.sent = [frame], []

    async def send(self, message: str | bytes, text: bool | None = None) -> None:
        self.sent.append(message)

    async def recv(self) -> str | bytes:
        if self.frames:
            return self.frames.pop()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_a_browser_frame_that_is_not_utf8_ends_the_session_as_a_protocol_error() -> None:
    async def session() -> Ended:
        guacd = await connect(double.address, "vnc", {}, ClientInfo(), timeout=5)
        return await relay(_BinaryBrowser(b"4.sync,\xff\xfe;"), guacd, read_only=False)

    with GuacdDouble() as double:
        ended = asyncio.run(session())
    assert ended.by == "error" and "not UTF-8" in ended.detail


# -- the browser's query string: screen size, codecs, time zone -----------------------------------------
QUERY_KEYS = st.sampled_from(["width", "height", "dpi", "audio", "video", "image", "timezone", "token"]) | st.text(max_size=8)
QUERY_VALUES = st.text(max_size=30) | st.sampled_from(["²", "١٠٠", "0", "-5", "9" * 5000, "image/png", "audio/L16;rate=44100"])


@fuzz_settings()
@given(st.dictionaries(QUERY_KEYS, st.lists(QUERY_VALUES, max_size=12), max_size=8))
@example({"width": ["²"]})  # a Unicode digit: int() raised ValueError out of the session
@example({"height": ["9" * 5000]})  # past Python's 4,300-digit int() limit
def test_any_query_string_gives_a_bounded_client_info(query: dict[str, list[str]]) -> None:
    info = client_info(query, "Ada")
    assert 0 < info.width <= 8192 and 0 < info.height <= 8192 and 0 < info.dpi <= 600
    assert len(info.audio) <= 8 and len(info.video) <= 8 and 0 < len(info.image) <= 8
    assert info.name == "Ada"
