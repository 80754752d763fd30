"""The real app served over real HTTP on 127.0.0.1, and learners who talk to it with `requests`.

Tests reach the app the way a browser does (TCP, cookies, redirects), not through Flask's test client,
so what they see is what gunicorn would serve: status codes, headers, error pages and the session cookie.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Iterator

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server


class LiveServer:
    """A threaded werkzeug server around one app, on a free port, stopped by `close`."""

    def __init__(self, app: Flask, port: int = 0, ssl_context: tuple[str, str] | None = None) -> None:
        self._server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True, ssl_context=ssl_context)
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="live-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def free_port() -> int:
    """A port free now, for a server whose own URL must be in its settings before it starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(app: Flask, port: int = 0, ssl_context: tuple[str, str] | None = None) -> Iterator[LiveServer]:
    """Serve `app` for the duration of a fixture."""
    server = LiveServer(app, port, ssl_context)
    try:
        yield server
    finally:
        server.close()


class Learner:
    """One browser: a cookie jar on the live server, with the few moves a learner makes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = requests.Session()

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.get(self.base_url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.post(self.base_url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def csrf_token(self) -> str:
        """The CSRF token of this browser's session, read from a page's form as a browser would have it."""
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get("/").text)
        assert found, "no form with a CSRF token on the home page"
        return found.group(1)

    def sign_in(self, name: str) -> requests.Response:
        return self.post("/dev/login", data={"name": name, "csrf_token": self.csrf_token()})

    def launch(self, activity_id: int) -> requests.Response:
        """Press "Open lab" on the home page; follows the redirect to the lab page."""
        return self.post(f"/activities/{activity_id}/launch", data={"csrf_token": self.csrf_token()})

    def lab_id(self, response: requests.Response) -> int:
        """The lab id of the lab page a launch landed on."""
        found = re.search(r"/labs/(\d+)$", response.url)
        assert found, f"not a lab page: {response.url}"
        return int(found.group(1))
