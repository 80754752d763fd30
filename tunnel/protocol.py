"""The Guacamole protocol's framing: instructions as `LENGTH.VALUE,LENGTH.VALUE,...;`.

Every element carries its length in Unicode code points, so a value may contain `;`, `,` or `.` and
multibyte characters. pyguacamole encodes correctly (we use its encoder), but its reader splits on the
first `;` and ignores the length prefixes: a window title holding `;` breaks the stream and every later
instruction. `InstructionReader` reads on the length prefixes instead, across arbitrary TCP reads (a
multibyte character or a 100 kB blob may arrive in many pieces), and hands back whole instructions only.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from guacamole.instruction import GuacamoleInstruction

INTERNAL_OPCODE = ""  # the tunnel's own instructions (ping, tunnel id); never forwarded to guacd
MAX_ELEMENT = 8 * 1024 * 1024  # a longer length prefix is a broken or hostile peer, not data
MAX_INSTRUCTION = 8 * 1024 * 1024  # characters of one whole instruction, `;` included


class ProtocolError(ValueError):
    """The peer sent something that is not a Guacamole instruction stream."""


@dataclass(frozen=True)
class Instruction:
    """One parsed instruction; `raw` is its exact encoding, forwarded as it came."""

    opcode: str
    args: tuple[str, ...]
    raw: str


def encode(opcode: str, *args: object) -> str:
    """The wire form of one instruction (pyguacamole's encoder, which counts code points correctly)."""
    return GuacamoleInstruction(opcode, *(str(arg) for arg in args)).encode()


def parse_one(text: str) -> Instruction:
    """Parse exactly one whole instruction (a WebSocket message from the browser, a handshake reply)."""
    reader = InstructionReader()
    found = reader.feed_text(text)
    if len(found) != 1 or reader.pending:
        raise ProtocolError(f"expected one whole instruction, got {text[:80]!r}")
    return found[0]


class InstructionCutter:
    """Cuts a guacd byte stream after its last whole instruction, without decoding it: the relay's hot path.

    guacd's stream is almost all ASCII (base64 image data, numbers), where a length in code points is a
    length in bytes, so boundaries are found on the bytes and whole instructions are forwarded as they
    came. A buffer holding any other character is cut through the decoding `InstructionReader` instead.
    """

    def __init__(self, pending: bytes = b"") -> None:
        self._buffer = bytearray(pending)

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        """The whole instructions completed by `data` (as bytes), and their opcodes."""
        self._buffer += data
        end, opcodes = _cut_ascii(self._buffer) if self._buffer.isascii() else _cut_text(self._buffer)
        complete = bytes(self._buffer[:end])
        del self._buffer[:end]
        return complete, opcodes


def _cut_ascii(buffer: bytearray) -> tuple[int, list[str]]:
    """Where the last whole instruction ends in an ASCII buffer, and the opcodes before it."""
    position, last, opcodes, opcode = 0, 0, [], None
    while True:
        dot = buffer.find(b".", position, position + 10)
        if dot < 0:
            if len(buffer) - position >= 10:
                raise ProtocolError(f"bad length prefix {bytes(buffer[position:position + 10])!r}")
            InstructionReader._check_length_digits(buffer[position:].decode())
            return last, opcodes
        end = dot + 1 + InstructionReader._length(buffer[position:dot].decode())
        _check_instruction_size(end + 1 - last)
        if end >= len(buffer):
            return last, opcodes
        if opcode is None:
            opcode = buffer[dot + 1:end].decode()
        terminator = buffer[end]
        if terminator == 0x3B:  # ";"
            opcodes.append(opcode)
            last, opcode = end + 1, None
        elif terminator != 0x2C:  # ","
            raise ProtocolError(f"element is followed by {chr(terminator)!r}, not ',' or ';'")
        position = end + 1


def _cut_text(buffer: bytearray) -> tuple[int, list[str]]:
    """The same for a buffer holding multibyte characters: decode, parse, and measure back in bytes."""
    try:
        text = buffer.decode()
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":
            raise ProtocolError(f"not UTF-8: {exc}") from None
        text = buffer[:exc.start].decode()
    found = InstructionReader().feed_text(text)
    characters = sum(len(instruction.raw) for instruction in found)
    return len(text[:characters].encode()), [instruction.opcode for instruction in found]


def _check_instruction_size(characters: int) -> None:
    """Refuse an instruction whose announced lengths add up to more than MAX_INSTRUCTION."""
    if characters > MAX_INSTRUCTION:
        raise ProtocolError(f"instruction of more than {MAX_INSTRUCTION} characters is too long")


class InstructionReader:
    """Turns a stream of bytes (or text) into whole instructions, keeping any incomplete tail."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._buffer = ""
        self._start = 0  # where the next instruction begins in _buffer
        self._scan = 0  # how far the current instruction has been checked
        self._elements: list[str] = []

    @property
    def pending(self) -> bool:
        """Whether an incomplete instruction is waiting for more data."""
        return self._start < len(self._buffer)

    def unread(self) -> bytes:
        """The bytes not yet part of a whole instruction, to hand the stream over to an `InstructionCutter`."""
        return self._buffer[self._start:].encode() + self._decoder.getstate()[0]

    def feed(self, data: bytes) -> list[Instruction]:
        """Add bytes from the socket; return the instructions they complete, in order."""
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"not UTF-8: {exc}") from None
        return self.feed_text(text)

    def feed_text(self, text: str) -> list[Instruction]:
        """Add text; return the instructions it completes."""
        self._buffer = self._buffer[self._start:] + text
        self._scan -= self._start
        self._start = 0
        found: list[Instruction] = []
        while (instruction := self._next()) is not None:
            found.append(instruction)
        return found

    def _next(self) -> Instruction | None:
        """The next whole instruction in the buffer, or None when it is not all here yet."""
        buffer = self._buffer
        while True:
            dot = buffer.find(".", self._scan)
            if dot < 0:
                self._check_length_digits(buffer[self._scan:])
                return None
            length = self._length(buffer[self._scan:dot])
            end = dot + 1 + length
            _check_instruction_size(end + 1 - self._start)
            if end >= len(buffer):
                return None
            self._elements.append(buffer[dot + 1:end])
            self._scan = end + 1
            if buffer[end] == ";":
                return self._complete()
            if buffer[end] != ",":
                raise ProtocolError(f"element of length {length} is followed by {buffer[end]!r}, not ',' or ';'")

    def _complete(self) -> Instruction:
        raw = self._buffer[self._start:self._scan]
        opcode, *args = self._elements
        self._elements = []
        self._start = self._scan
        return Instruction(opcode, tuple(args), raw)

    @staticmethod
    def _length(digits: str) -> int:
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 8:  # "²".isdigit() is True
            raise ProtocolError(f"bad length prefix {digits[:20]!r}")
        length = int(digits)
        if length > MAX_ELEMENT:
            raise ProtocolError(f"element of {length} characters is too long")
        return length

    @staticmethod
    def _check_length_digits(tail: str) -> None:
        """A length prefix still arriving must be digits, so garbage is refused before it piles up."""
        if tail and (not (tail.isascii() and tail.isdigit()) or len(tail) > 8):
            raise ProtocolError(f"bad length prefix {tail[:20]!r}")
