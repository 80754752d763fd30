"""The fault proxy itself (tests/support/fault_proxy.py), against a small real HTTP/1.1 upstream: it relays
keep-alive requests and chunked bodies both ways, counts what reached the upstream, and each mode does what
the fault tests rely on (a 5xx the upstream never sees, a hang the client's timeout ends, an answer lost
after the upstream did the work)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from tests.support.fault_proxy import FaultProxy


class Upstream(BaseHTTPRequestHandler):
    """Echoes each request's method, path and body as JSON; chunked when the path ends in /chunked."""

    protocol_version = "HTTP/1.1"
    received: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        if self.headers.get("Transfer-Encoding") == "chunked":
            raise AssertionError("the proxy sends bodies with a length")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Upstream.received.append(f"{self.command} {self.path}")
        answer = json.dumps({"method": self.command, "path": self.path, "body": body.decode()}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        if self.path.endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(answer), 7):
                piece = answer[start:start + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    do_GET = do_POST


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    Upstream.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    found = FaultProxy(f"http://127.0.0.1:{server.server_port}")
    yield found
    found.close()
    server.shutdown()
    server.server_close()


def send_chunked(connection: http.client.HTTPConnection, path: str, body: bytes) -> http.client.HTTPResponse:
    connection.putrequest("POST", path)
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    for start in range(0, len(body), 5):
        piece = body[start:start + 5]
        connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    connection.send(b"0\r\n\r\n")
    return connection.getresponse()


def test_keep_alive_and_chunked_bodies_pass_through_and_are_counted(proxy: FaultProxy) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=10)
    first = send_chunked(connection, "/v1/stacks/chunked", b'{"stack_name": "lab-1"}')
    assert first.getheader("Transfer-Encoding") == "chunked"
    assert json.loads(first.read()) == {"method": "POST", "path": "/v1/stacks/chunked", "body": '{"stack_name": "lab-1"}'}
    socket_used = connection.sock
    connection.request("GET", "/v1/stacks?tags=x")
    second = connection.getresponse()
    assert (second.status, json.loads(second.read())["path"]) == (201, "/v1/stacks?tags=x")
    assert connection.sock is socket_used, "one kept-alive connection for both"
    assert proxy.counts() == {("POST", "/v1/stacks/chunked"): 1, ("GET", "/v1/stacks"): 1}
    assert [s.json() for s in proxy.forwarded("POST")] == [{"stack_name": "lab-1"}]


def test_each_mode_and_what_reaches_the_upstream(proxy: FaultProxy) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    proxy.fail(503, method="POST", times=1)
    refused = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    refused.request("POST", "/v1/stacks", body=b"{}")
    answer = refused.getresponse()
    assert answer.status == 503 and json.loads(answer.read())["code"] == 503
    assert Upstream.received == []  # the upstream never saw it

    proxy.fail(502, body="html")
    refused.request("GET", "/v1/stacks")
    page = refused.getresponse()
    assert (page.status, page.getheader("Content-Type")) == (502, "text/html; charset=UTF-8") and b"<h1>502 Bad Gateway</h1>" in page.read()

    proxy.hang()
    hung = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    with pytest.raises(socket.timeout):
        hung.request("GET", "/v1/stacks")
        hung.getresponse()
    hung.close()

    proxy.lose_answer(None)
    dropped = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises(http.client.RemoteDisconnected):
        dropped.request("POST", "/v1/stacks", body=b'{"a": 1}')
        dropped.getresponse()
    assert Upstream.received == ["POST /v1/stacks"]  # done by the upstream, the answer lost

    proxy.pass_through()
    fine = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    fine.request("POST", "/v1/stacks", body=b"{}")
    assert fine.getresponse().status == 201
    assert [(s.fault, s.forwarded, s.status) for s in proxy.requests()] == [
        ("fail", False, 503), ("fail", False, 502), ("hang", False, None), ("lose_answer", True, None), ("", True, 201),
    ]
