"""A reverse proxy on loopback that forwards to a real upstream and can be made to misbehave at run time.

Fault tests put it between LabDesk and a service that cannot be made to fail on cue (the standalone Heat
engine, the LMS double). It speaks HTTP/1.1 on both sides: keep-alive connections, request and response
bodies of fixed length or chunked (a chunked answer goes back chunked). Per request it applies the first
matching fault, else forwards:

- `fail(503)` (or 500, 502 …): answers at once as OpenStack's API or a load balancer in front of it would,
  with a JSON fault body (`body="json"`) or an HTML error page (`body="html"`); the upstream sees nothing.
- `hang()`: reads the request and never answers, so the client's own timeout must fire.
- `lose_answer()`: forwards the request (the upstream does the work), then answers 502 instead of what
  the upstream said, or drops the connection (`status=None`): the classic cause of orphaned objects.

Each of these switches modes at once (`add` combines faults, `pass_through` ends them). A fault may be
limited to a method, a path (a regular expression searched in the path) and a number of requests (`times`). Every request is recorded (method, path, body, fault applied, whether it reached the
upstream), so a test can count what the upstream really received.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
TITLES = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
HANG_LIMIT = 300.0  # seconds a hung request is held at most (a test that forgot its client's timeout ends)


@dataclass
class Fault:
    """One way to misbehave, for the requests it matches."""

    mode: str  # "fail", "hang" or "lose_answer"
    status: int | None = 503
    body: str = "json"
    method: str | None = None
    path: str | None = None
    times: int | None = None  # None: every matching request until cleared

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return (self.method is None or self.method == method) and (self.path is None or re.search(self.path, path) is not None)


@dataclass(frozen=True)
class Seen:
    """A request the proxy received, and what became of it."""

    method: str
    path: str
    body: bytes
    fault: str  # "" when passed through
    forwarded: bool  # the upstream received it
    status: int | None  # what the client was answered (None: nothing, the connection was dropped or hung)

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


class FaultProxy:
    """The proxy: `url` stands for the upstream's origin (paths are kept as they are)."""

    def __init__(self, upstream: str, timeout: float = 60.0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.proxy = self
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()

    # -- switching modes ---------------------------------------------------------------------------------
    def fail(self, status: int = 503, body: str = "json", **match: object) -> Fault:
        """Switch to answering `status` (instead of any fault set before)."""
        return self.switch(Fault("fail", status, body, **match))  # type: ignore[arg-type]

    def hang(self, **match: object) -> Fault:
        """Switch to never answering."""
        return self.switch(Fault("hang", None, **match))  # type: ignore[arg-type]

    def lose_answer(self, status: int | None = 502, **match: object) -> Fault:
        """Switch to forwarding, then answering `status` (None: dropping the connection) instead."""
        return self.switch(Fault("lose_answer", status, **match))  # type: ignore[arg-type]

    def switch(self, fault: Fault) -> Fault:
        """This fault in place of any other, at once (no request slips through between two modes)."""
        with self.lock:
            self.faults[:] = [fault]
        return fault

    def add(self, fault: Fault) -> Fault:
        """This fault as well (the first that matches a request applies)."""
        with self.lock:
            self.faults.append(fault)
        return fault

    def pass_through(self) -> None:
        """Back to forwarding everything (requests hung now stay hung until their client gives up)."""
        with self.lock:
            self.faults.clear()

    # -- what came through ---------------------------------------------------------------------------------
    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Requests received, optionally of one method and whose path matches `path` (re.search)."""
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method) and (path is None or re.search(path, s.path))]

    def forwarded(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Those of `requests(...)` that reached the upstream."""
        return [s for s in self.requests(method, path) if s.forwarded]

    def faulted(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Those of `requests(...)` a fault was applied to."""
        return [s for s in self.requests(method, path) if s.fault]

    def counts(self) -> dict[tuple[str, str], int]:
        """Requests received per (method, path)."""
        found: dict[tuple[str, str], int] = {}
        for s in self.requests():
            found[(s.method, s.path)] = found.get((s.method, s.path), 0) + 1
        return found

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # -- used by the handler -------------------------------------------------------------------------------
    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet: tests read `seen`
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        path = urlsplit(self.path).path
        fault = proxy.take_fault(self.command, path)
        mode = fault.mode if fault else ""
        if fault is not None and fault.mode == "fail":
            status = fault.status or 503
            proxy.record(Seen(self.command, path, body, mode, False, status))  # recorded before the client hears
            self._answer(status, *_error_body(status, fault.body))
            return
        if fault is not None and fault.mode == "hang":
            proxy.record(Seen(self.command, path, body, mode, False, None))
            self._hold()
            return
        try:
            status, reason, headers, payload, chunked = self._forward(body)
        except OSError as exc:  # the upstream is down: what a proxy says then
            proxy.record(Seen(self.command, path, body, mode, False, 502))
            self._answer(502, *_error_body(502, "html", f"upstream unreachable: {exc}"))
            return
        if fault is not None:  # lose_answer: the upstream did the work, the client never learns it
            proxy.record(Seen(self.command, path, body, mode, True, fault.status))
            if fault.status is None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self._answer(fault.status, *_error_body(fault.status, fault.body))
            return
        proxy.record(Seen(self.command, path, body, "", True, status))
        self._relay(status, reason, headers, payload, chunked)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes, bool]:
        """Send the request upstream on this connection's own keep-alive connection; the whole answer."""
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=proxy.timeout)
            try:
                self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = self.upstream.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.upstream.close()
                self.upstream = None  # a kept-alive connection the upstream closed meanwhile: once more
                if attempt == 2:
                    raise
                continue
            chunked = "chunked" in (response.getheader("Transfer-Encoding") or "").lower()
            if response.will_close:
                self.upstream.close()
                self.upstream = None
            return response.status, response.reason, response.getheaders(), payload, chunked
        raise AssertionError("unreachable")

    def _relay(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes, chunked: bool) -> None:
        proxy = self.server.proxy
        self.send_response_only(status, reason)
        for key, value in headers:
            if key.lower() in HOP_BY_HOP or key.lower() in ("date", "server"):
                continue
            if key.lower() == "location":  # as a reverse proxy rewrites redirects (nginx's proxy_redirect)
                value = value.replace(proxy.upstream_origin, proxy.url)
            self.send_header(key, value)
        self.send_header("Date", self.date_time_string())
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for start in range(0, len(payload), 8192):
                    piece = payload[start:start + 8192]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        self.wfile.flush()

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status, TITLES.get(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _hold(self) -> None:
        """Never answer: wait until the client gives up (closes), the proxy closes, or HANG_LIMIT."""
        proxy = self.server.proxy
        self.close_connection = True
        waited = 0.0
        while waited < HANG_LIMIT and not proxy.closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            waited += 0.2
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return  # the client closed: its timeout fired
                except OSError:
                    return

    def finish(self) -> None:
        super().finish()
        if self.upstream is not None:
            self.upstream.close()


def _error_body(status: int, kind: str, detail: str = "") -> tuple[str, bytes]:
    """What OpenStack's API (JSON fault) or a load balancer in front of it (HTML page) answers."""
    title = TITLES.get(status, "Error")
    explanation = detail or "The server is currently unavailable. Please try again at a later time."
    if kind == "html":
        page = f"<html><body><h1>{status} {title}</h1>\n{explanation}\n</body></html>\n"
        return "text/html; charset=UTF-8", page.encode()
    fault = {
        "code": status, "title": title, "explanation": explanation,
        "error": {"type": "HTTPServiceUnavailable" if status == 503 else "HTTPInternalServerError", "message": explanation, "traceback": None},
    }
    return "application/json; charset=UTF-8", json.dumps(fault).encode()
