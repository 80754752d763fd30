"""The app on the test's database and keys, but with Redis unreachable: its URL names a loopback port
nobody listens on, so every Redis call is refused at once (as when Redis is down)."""

from __future__ import annotations

import dataclasses
from typing import Iterator

from app import create_app
from broker.runtime import Runtime
from tests.support.http import LiveServer, free_port, serve


def serve_without_redis(rt: Runtime) -> Iterator[LiveServer]:
    """Serve the same app for a fixture; a browser signed in on the test's server is signed in here too
    (same secret key, same host), so point it here with `browser.base_url = server.url`."""
    down = Runtime(dataclasses.replace(rt.settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        yield from serve(create_app(down.settings, down))
    finally:
        down.close()
