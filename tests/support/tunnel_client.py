"""A browser's side of the tunnel for tests and benchmarks: a real WebSocket speaking what
guacamole-common-js speaks (subprotocol `guacamole`, one or more whole instructions per message)."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.guacd_double import Decoder, Instruction, encode


class TunnelClient:
    """One tunnel connection; `messages` keeps every message as received, `seen` every instruction."""

    def __init__(self, url: str, token: str, **query: object) -> None:
        self.ws: ClientConnection = connect(f"{url}?{urlencode({'token': token, **query}, doseq=True)}",
                                            subprotocols=["guacamole"], open_timeout=10, legacy=True)  # type: ignore[list-item]
        self.messages: list[str] = []
        self.seen: list[Instruction] = []
        self.unread: list[Instruction] = []  # read off the socket, not yet taken by `until`
        self.closed = False

    def send(self, opcode: str, *args: object) -> None:
        self.ws.send(encode(opcode, *args))

    def read(self, timeout: float = 5.0) -> list[Instruction]:
        """The instructions of the next message (each message must hold whole instructions only)."""
        try:
            message = self.ws.recv(timeout=timeout)
        except ConnectionClosed:
            self.closed = True
            return []
        except TimeoutError:
            return []
        assert isinstance(message, str), "the tunnel sends text messages"
        decoder = Decoder()
        found = decoder.feed(message.encode())
        assert decoder._text == "", f"a message ended inside an instruction: {message[-80:]!r}"
        self.messages.append(message)
        self.seen.extend(found)
        self.unread.extend(found)
        return found

    def until(self, opcode: str, timeout: float = 5.0, answer_sync: bool = True) -> Instruction:
        """Read until `opcode` arrives, answering `sync` as a browser does; fail on close or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.unread:
                self.read(max(0.01, deadline - time.monotonic()))
            while self.unread:
                instruction = self.unread.pop(0)
                if answer_sync and instruction[0] == "sync":
                    self.send("sync", instruction[1][0])
                if instruction[0] == opcode:
                    return instruction
            if self.closed:
                raise AssertionError(f"closed before {opcode!r}; seen {[i[0] for i in self.seen]}")
        raise AssertionError(f"no {opcode!r} within {timeout} s; seen {[i[0] for i in self.seen]}")

    def refusal(self, timeout: float = 5.0) -> tuple[str, int, str]:
        """(message, status) of the `error` the tunnel sent, and the close reason it closed with."""
        error = self.until("error", timeout, answer_sync=False)
        try:
            self.ws.recv(timeout=timeout)
        except ConnectionClosed as closed:
            reason = closed.rcvd.reason if closed.rcvd else ""
        else:
            raise AssertionError("the tunnel did not close after refusing")
        return error[1][0], int(error[1][1]), reason

    def close(self) -> None:
        self.ws.close()
