"""One simulated learner of `bench.soak`, doing what the lab page (web/static/lab*.js) does for a real one.

An LTI 1.3 launch from the platform (OIDC login, a signed id_token, `POST /lti/launch`), the lab page it is
sent to (its CSRF token), the status API polled every 1.5 s until the lab runs (and, with `status_every`,
as the connected page does every 5 s); a connection token and the desktop WebSocket to the tunnel with it,
answering every `sync` guacd sends and moving the mouse once a second; a keepalive every `keepalive`
seconds; "Check my work" at planned moments, following the attempt every second until it ends. Some
learners leave (close the desktop, send `leave`), wait until the sweep has suspended their lab, and launch
again, which resumes it. At the end each reports whether its lab runs and its desktop is still streaming.

HTTP goes through bench/soak_http.py (a thread pool), the desktop through bench/soak_desktop.py (asyncio
`websockets`); both run in the driver's one process, and record every call per endpoint.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests

from bench.launch import CONTEXT, LINK, learner
from bench.soak_desktop import Desktop
from bench.soak_http import Driver
from bench.soak_stack import LAB

ENDPOINTS = ["lti_login", "lti_launch", "lab_page", "lab_status", "connection", "tunnel_open", "tunnel_sync",
             "keepalive", "check", "attempt", "check_result", "leave", "resume"]
CSRF = re.compile(r'data-csrf="([^"]+)"')
STARTING_POLL = 1.5  # lab.js POLL_MS.starting


@dataclass
class Plan:
    """When things happen, in seconds of the driver's monotonic clock."""

    start: float
    end: float
    keepalive: float
    status_every: float  # 0: no status polls once connected
    checks: int
    away: bool


class Learner:
    def __init__(self, index: int, driver: Driver, plan: Plan) -> None:
        self.index, self.driver, self.plan, self.rec = index, driver, plan, driver.recorder
        self.cookie = ""
        self.csrf = ""
        self.lab_id = 0
        self.desktop: Desktop | None = None
        self.background: list[asyncio.Task[None]] = []
        self.ran = False  # reached running at least once
        self.sustained = False
        self.resumed = False

    # -- the life of a learner -------------------------------------------------------------------------
    async def live(self) -> None:
        await asyncio.sleep(max(0.0, self.plan.start - time.monotonic()))
        try:
            if not await self.arrive():
                return
            for moment, action in self.schedule():
                await asyncio.sleep(max(0.0, moment - time.monotonic()))
                if time.monotonic() >= self.plan.end:
                    break
                await action()
            await asyncio.sleep(max(0.0, self.plan.end - time.monotonic()))
            self.sustained = await self.still_working()
        finally:
            await self.depart()

    def schedule(self) -> list[tuple[float, Any]]:
        """Checks, and for some learners one absence, at random moments of what is left of the run."""
        now, left = time.monotonic(), self.plan.end - time.monotonic()
        moments = []
        if self.plan.checks > 0:
            moments.append((now + left * random.uniform(0.1, 0.4), self.check))
        if self.plan.checks > 1:
            moments.append((now + left * random.uniform(0.5, 0.75), self.check))
        if self.plan.away and left > 150:
            moments.append((now + left * random.uniform(0.15, 0.35), self.away))
        return sorted(moments, key=lambda m: m[0])

    async def arrive(self) -> bool:
        """Launch; keepalives from the moment the page is open (as lab.js: one at once, then every period);
        wait for running, open the desktop, then the connected page's status polls if asked for."""
        if not await self.launch():
            return False
        self.background = [asyncio.ensure_future(self.every(self.plan.keepalive, self.keepalive))]
        if not await self.wait_for("running", STARTING_POLL):
            return False
        self.ran = True
        if not await self.open_desktop():
            return False
        if self.plan.status_every:
            self.background.append(asyncio.ensure_future(self.every(self.plan.status_every, self.status, random.uniform(0, self.plan.status_every))))
        return True

    async def depart(self) -> None:
        for task in self.background:
            task.cancel()
        if self.desktop:
            await self.desktop.close()

    async def still_working(self) -> bool:
        desktop_ok = self.desktop is not None and self.desktop.streaming()
        return desktop_ok and await self.status() == "running"

    # -- the calls ---------------------------------------------------------------------------------------
    async def launch(self) -> bool:
        driver, lms = self.driver, self.driver.lms
        query = dict(iss=lms.issuer, login_hint="soak", target_link_uri=driver.base + "/lti/launch", client_id=lms.client_id,
                     lti_message_hint="soak")
        login = await driver.call("lti_login", "GET", "/lti/login?" + urllib.parse.urlencode(query), (302,))
        if login is None:
            return False
        sent = urllib.parse.parse_qs(urllib.parse.urlsplit(login.headers["Location"]).query)
        state, nonce = sent["state"][0], sent["nonce"][0]
        token = lms.sign(lms.claims(nonce, target_link_uri=driver.base + "/lti/launch", resource_link=LINK, context=CONTEXT,
                                    custom={"lab": LAB}, **learner(self.index, "soak-learner")))
        launched = await driver.call("lti_launch", "POST", "/lti/launch", (303,), data={"id_token": token, "state": state},
                                     headers={"Cookie": f"ld_state_{state}={state}"})
        if launched is None:
            return False
        self._keep_cookie(launched)
        path = urllib.parse.urlsplit(launched.headers.get("Location", "")).path
        self.lab_id = int(path.rsplit("/", 1)[1])
        page = await driver.call("lab_page", "GET", path, (200,), headers={"Cookie": self.cookie})
        if page is None:
            return False
        self._keep_cookie(page)
        found = CSRF.search(page.text)
        if found is None:
            self.rec.error("lab_page", "no data-csrf in the lab page")
            return False
        self.csrf = found[1]
        return True

    def _keep_cookie(self, response: requests.Response) -> None:
        if "session" in response.cookies:
            self.cookie = f"session={response.cookies['session']}"

    async def status(self) -> str:
        response = await self.driver.call("lab_status", "GET", f"/api/labs/{self.lab_id}", (200,), headers={"Cookie": self.cookie})
        return str(response.json().get("state")) if response is not None else ""

    async def wait_for(self, state: str, every: float) -> bool:
        started = time.monotonic()
        while time.monotonic() < self.plan.end:
            if await self.status() == state:
                return True
            await asyncio.sleep(every)
        self.rec.error("lab_status", f"lab {self.lab_id} not {state} by the end of the run ({time.monotonic() - started:.0f} s)")
        return False

    async def open_desktop(self) -> bool:
        answer = await self.driver.call("connection", "POST", f"/api/labs/{self.lab_id}/connection", (200,), json={"host": ""},
                                        headers={"Cookie": self.cookie, "X-CSRF-Token": self.csrf})
        if answer is None:
            return False
        grant = answer.json()
        self.desktop = Desktop(self.rec)
        return await self.desktop.open(grant["tunnel_url"], grant["token"])

    async def keepalive(self) -> None:
        await self.driver.call("keepalive", "POST", f"/api/labs/{self.lab_id}/keepalive", (204,), headers={"Cookie": self.cookie})

    async def every(self, seconds: float, action: Any, first: float = 0.0) -> None:
        await asyncio.sleep(first)
        while True:
            await action()
            await asyncio.sleep(seconds)

    async def check(self) -> None:
        """"Check my work": start an attempt, follow it every second until it has finished."""
        started = time.perf_counter()
        answer = await self.driver.call("check", "POST", f"/api/labs/{self.lab_id}/check", (202,), json={},
                                        headers={"Cookie": self.cookie, "X-CSRF-Token": self.csrf})
        if answer is None:
            return
        attempt = answer.json()["attempt"]
        while not attempt.get("finished"):
            if time.monotonic() > self.plan.end:
                self.rec.error("check_result", f"attempt {attempt.get('id')} still {attempt.get('state')} at the end of the run "
                               f"({time.perf_counter() - started:.0f} s after the click)")
                return
            await asyncio.sleep(1.0)
            followed = await self.driver.call("attempt", "GET", attempt["url"], (200,), headers={"Cookie": self.cookie})
            if followed is None:
                return
            attempt = followed.json()
        results = attempt.get("checks") or []
        if attempt.get("state") == "done" and results and all(c.get("state") == "passed" for c in results):
            self.rec.ok("check_result", time.perf_counter() - started)
        else:
            self.rec.error("check_result", json.dumps({k: attempt.get(k) for k in ("state", "error", "checks")})[:300])

    async def away(self) -> None:
        """Close the desktop and leave; once the sweep has suspended the lab, launch again (it resumes)."""
        for task in self.background:
            task.cancel()
        if self.desktop:
            await self.desktop.close()
            self.desktop = None
        await self.driver.call("leave", "POST", f"/api/labs/{self.lab_id}/leave", (204,), headers={"Cookie": self.cookie})
        if not await self.wait_for("suspended", 5.0):
            return
        started = time.perf_counter()
        if await self.arrive():
            self.resumed = True
            self.rec.ok("resume", time.perf_counter() - started)
