"""The HTTP side of `bench.soak`'s learners: `requests` in a thread pool, driven from the asyncio loop.

Why threads: the calls are few and short next to the WebSockets, `requests` is what the other benches use,
and the pool bounds how many calls are in flight at once. Each thread keeps its own keep-alive connections
and never a cookie: each learner sends its own session cookie, as its browser would. Every call is timed
and recorded per endpoint (bench/soak_record.py); a status outside the expected ones, or an exception, is
an error with its message.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests

from bench.soak_record import Recorder
from tests.lti.signing_platform import SigningPlatform


class Driver:
    """What all learners share: the platform, the recorder, the HTTP thread pool."""

    def __init__(self, base: str, lms: SigningPlatform, recorder: Recorder, threads: int) -> None:
        self.base, self.lms, self.recorder = base, lms, recorder
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="soak-http")
        self._local = threading.local()
        self.stale_retries = 0
        self.sessions: list[requests.Session] = []

    def close(self) -> None:
        """End the thread pool and its kept-alive connections (gunicorn waits for open ones when it stops)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for http in self.sessions:
            http.close()

    def _session(self) -> requests.Session:
        http = getattr(self._local, "http", None)
        if http is None:  # one per thread, for its keep-alive connections; cookies are never kept in it
            http = self._local.http = requests.Session()
            http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            self.sessions.append(http)
        return http

    def _call(self, method: str, url: str, kwargs: dict[str, Any]) -> tuple[requests.Response | None, float, str]:
        """One request; sent once more when a kept-alive connection turned out closed before any answer
        (gunicorn closes idle ones after 2 s; a browser retries those too), and counted in `stale_retries`."""
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                response = self._session().request(method, url, allow_redirects=False, timeout=60, **kwargs)
                return response, time.perf_counter() - started, ""
            except requests.ConnectionError as exc:
                if attempt == 1 and "Connection aborted" in str(exc):
                    self.stale_retries += 1
                    started = time.perf_counter()
                    continue
                return None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
            except requests.RequestException as exc:
                return None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
        raise AssertionError("unreachable")

    async def call(self, name: str, method: str, path: str, expect: tuple[int, ...], **kwargs: Any) -> requests.Response | None:
        """One HTTP call, recorded under `name`; the response when its status is expected, else None."""
        url = path if path.startswith("http") else self.base + path
        response, seconds, failure = await asyncio.get_running_loop().run_in_executor(self.pool, self._call, method, url, kwargs)
        if response is None or response.status_code not in expect:
            detail = failure or f"{response.status_code} {response.text[:200]!r}"  # type: ignore[union-attr]
            self.recorder.error(name, f"{method} {urllib.parse.urlsplit(url).path}: {detail}")
            return None
        self.recorder.ok(name, seconds)
        return response
