"""One class's day on a LabDesk `Stack` (tests/support/stack.py), and what it left behind.

Each learner launches through a signed LTI 1.3 launch (login on one web process, launch on the next), waits
for `running` on the status API, sends a keepalive, opens the desktop through a tunnel process to the guacd
double and exchanges a few instructions, runs "Check my work" once (the fake backend's `local` target runs
the two checks for real), and leaves (the page's `leave` signal). The idle sweep suspends them. Then every
fourth learner comes back (resume), every fourth other one resets the lab, and an admin deletes every lab
with the console's bulk action, posted twice at once to two web processes (a double click across replicas).
Web and tunnel processes are taken round-robin, so consecutive requests of one learner reach different
processes.

`run` returns an `Outcome`: what a user or admin would notice (per learner: each lab's path through the
states, its final state, the check scores) and what the backend saw (its call log), so two runs on
stacks of different shapes can be compared, and each run checked for jobs run twice and labs lost.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import requests
from redis import Redis
from sqlalchemy import select

from broker import admins, migrate, schedule
from broker.config import Settings
from broker.dispatch import DEFAULT_QUEUE
from broker.models import Backend, CheckAttempt, Image, Lab, LabEvent, User
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector, read_call_log
from lti import platforms
from tests.lti.signing_platform import SigningPlatform
from tests.support.guacd_double import GuacdDouble
from tests.support.http import free_port
from tests.support.stack import Shape, Stack
from tests.support.tunnel_client import TunnelClient

SLUG = "scale-lab"
LINK = {"id": "scale-link", "title": "Scale lab"}
CONTEXT = {"id": "scale-course", "title": "Scale course"}
ADMIN_PASSWORD = "correct horse battery staple"
# Two checks run by the `local` grading hook in the fake backend's directory: one passes (the test
# writes the answer there), one fails; a score of 5 of 10 proves both really ran.
SPEC: dict[str, Any] = {
    "max_score": 10,
    "checks": [
        {"id": "answer", "title": "answer.txt says 42", "builtin": "file-contains", "path": "answer.txt", "pattern": "^42$"},
        {"id": "report", "title": "report.txt exists", "builtin": "file-exists", "path": "report.txt"},
    ],
}
# Fast, but not instant: every provision, suspend and resume is polled at least once (rq's Retry).
FAKE = {"provision_delay": 0.3, "suspend_delay": 0.3, "resume_delay": 0.3}
# Labs before sweeps: with sweeps every 2 s, a lone worker that took the default queue first would spend
# most of its time on them (production runs the default queue on workers of its own, deploy/compose.yaml).
QUEUES = ("labdesk-backend-fake", DEFAULT_QUEUE)
WAIT = 180.0  # seconds any one thing may take before the scenario fails (a busy CI machine)


@dataclass
class Outcome:
    """What a run left: `learners` maps each learner to their labs' state paths, final states and scores."""

    learners: dict[str, dict[str, Any]]
    calls: list[tuple[str, int, int, str]]  # the fake backend's call log
    events: list[tuple[int, str, str, str | None]]  # (lab, from, to, job id) of every move
    labs_asked: set[int]  # every lab id a launch or reset answered with
    tunnel_sessions: int  # desktop sessions that reached guacd and relayed the learner's key press
    left_on_backend: list[int] = field(default_factory=list)  # lab ids of the fake's objects after the reconciler
    reconciled: dict[str, int] = field(default_factory=dict)  # what a reconciler pass did at the end
    seconds: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)

    def comparable(self) -> dict[str, Any]:
        """What must be equal whatever the stack's shape: per learner, and the backend's call counts."""
        return {"learners": self.learners, "calls": dict(Counter(op for op, *_ in self.calls)), "tunnel_sessions": self.tunnel_sessions}

    def doubled(self) -> list[tuple[object, ...]]:
        """Work done twice: a backend call made twice for one lab, or one lab's move recorded twice (in this
        day no lab goes through the same move twice, so either means a job or a sweep ran twice)."""
        calls = Counter((op, lab) for op, lab, _, _ in self.calls)
        moves = Counter((lab, src, dst) for lab, src, dst, _ in self.events)
        return [key for key, count in (calls + moves).items() if count > 1]

    def lost(self) -> set[int]:
        """Labs asked for that did not run, were never created or deleted on the backend, or did not end
        deleted; and labs that exist although nobody asked for them."""
        ran = {lab for lab, _, dst, _ in self.events if dst == "running"}
        ended = {lab for lab, _, dst, _ in self.events if dst == "deleted"}
        created = {lab for op, lab, _, _ in self.calls if op == "provision"}
        deleted = {lab for op, lab, _, _ in self.calls if op == "delete"}
        every = {lab for lab, *_ in self.events}
        return (self.labs_asked - (ran & ended & created & deleted)) | (every - self.labs_asked)

    def jobs(self) -> int:
        """rq jobs that moved a lab (each job id on the lab events)."""
        return len({job for *_, job in self.events if job})


def seed(settings: Settings, rt: Runtime, lms: SigningPlatform, fake_dir: Path) -> None:
    """The schema, the LMS, the fake backend (with the checks' answer file) and the image the link names."""
    migrate.upgrade(settings)
    platforms.add(rt, **lms.registration(), name="Scale LMS")
    fake_dir.mkdir(parents=True, exist_ok=True)
    (fake_dir / "answer.txt").write_text("42\n")
    with rt.session() as db:
        db.add(Backend(name="fake", kind="fake", config={"state_dir": str(fake_dir), **FAKE}))
        db.add(Image(slug=SLUG, title="Scale lab", protocol="vnc", spec=SPEC))
        admins.create_local(db, "root", ADMIN_PASSWORD)
        db.commit()


def browser() -> requests.Session:
    """A cookie jar whose requests each open a connection: a kept-alive one that gunicorn closes as it is
    reused is reset, which a browser would retry and `requests` does not."""
    http = requests.Session()
    http.headers["Connection"] = "close"
    return http


class Learner:
    """One browser. Request n of this learner goes to web process n mod N, its tunnel to tunnel i mod M."""

    def __init__(self, index: int, stack: Stack, lms: SigningPlatform) -> None:
        self.index, self.stack, self.lms = index, stack, lms
        self.subject = f"learner-{index:03d}"
        self.http = browser()
        self._turn = index
        self.labs: list[int] = []

    def url(self, path: str) -> str:
        urls = self.stack.web_urls
        self._turn += 1
        return urls[self._turn % len(urls)] + path

    def launch(self) -> int:
        """An LMS launch: the OIDC login on one web process, the signed id_token posted to the next."""
        public = self.stack.settings.public_url
        login = self.http.get(self.url("/lti/login"), allow_redirects=False, timeout=30, params=dict(
            iss=self.lms.issuer, login_hint=self.subject, target_link_uri=public + "/lti/launch",
            client_id=self.lms.client_id, lti_message_hint="scale"))
        assert login.status_code == 302, login.text
        sent = parse_qs(urlsplit(login.headers["Location"]).query)
        claims = self.lms.claims(sent["nonce"][0], sub=self.subject, name=f"Learner {self.index}", email=f"{self.subject}@example.edu",
                                 target_link_uri=public + "/lti/launch", resource_link=LINK, context=CONTEXT, custom={"lab": SLUG})
        landed = self.http.post(self.url("/lti/launch"), data={"id_token": self.lms.sign(claims), "state": sent["state"][0]},
                                allow_redirects=False, timeout=30)
        assert landed.status_code == 303, f"{self.subject}: launch answered {landed.status_code}: {landed.text[:300]}"
        lab_id = int(re.fullmatch(r".*/labs/(\d+)", landed.headers["Location"])[1])  # type: ignore[index]
        self._remember(lab_id)
        return lab_id

    def wait_for(self, lab_id: int, state: str) -> None:
        """Poll the lab page's status API until the lab is in `state`."""
        deadline = time.monotonic() + WAIT
        while (seen := self.http.get(self.url(f"/api/labs/{lab_id}"), timeout=30).json()["state"]) != state:
            assert seen != "failed" and time.monotonic() < deadline, f"{self.subject}: lab {lab_id} is {seen}, waited for {state}"
            time.sleep(0.2)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """A POST of the lab page's script: the CSRF token from the page, in the header."""
        page = self.http.get(self.url(f"/labs/{self.labs[-1]}"), timeout=30)
        token = re.search(r'data-csrf="([^"]+)"', page.text)
        assert token, f"{self.subject}: no CSRF token on the lab page"
        return self.http.post(self.url(path), headers={"X-CSRF-Token": token[1]}, timeout=30, **kwargs)

    def use_desktop(self, lab_id: int) -> None:
        """A desktop session through tunnel process i mod M: the first frame, a key press, a ping. Then
        the same token, played again on the next tunnel process, is refused: single use across processes."""
        answer = self.post(f"/api/labs/{lab_id}/connection", json={})
        assert answer.status_code == 200, answer.text
        token, tunnels = answer.json()["token"], self.stack.tunnel_urls
        client = TunnelClient(tunnels[self.index % len(tunnels)], token, width=800, height=600)
        try:
            client.until("sync", timeout=20)
            client.send("key", 65307, 1)
            client.send("key", 65307, 0)
            client.send("", "ping", self.index)
            assert client.until("", timeout=20)[1] == ("ping", str(self.index))
        finally:
            client.close()
        replayed = TunnelClient(tunnels[(self.index + 1) % len(tunnels)], token)
        try:
            assert "already used" in replayed.refusal(timeout=20)[0]
        finally:
            replayed.close()

    def check_my_work(self, lab_id: int) -> float:
        started = self.post(f"/api/labs/{lab_id}/check")
        assert started.status_code == 202, started.text
        url = started.json()["attempt"]["url"]
        deadline = time.monotonic() + WAIT
        while not (view := self.http.get(self.url(url), timeout=30).json())["finished"]:
            assert time.monotonic() < deadline, f"{self.subject}: check {url} still {view['state']}"
            time.sleep(0.2)
        assert view["state"] == "done", view
        return view["score_given"]

    def keepalive(self, lab_id: int) -> None:
        """The page's keepalive (web/presence.py reads ownership from the cookie another process signed)."""
        assert self.http.post(self.url(f"/api/labs/{lab_id}/keepalive"), timeout=30).status_code == 204

    def leave(self, lab_id: int) -> None:
        assert self.http.post(self.url(f"/api/labs/{lab_id}/leave"), timeout=30).status_code == 204

    def reset(self, lab_id: int) -> int:
        answer = self.post(f"/api/labs/{lab_id}/reset")
        assert answer.status_code == 202, answer.text
        self._remember(answer.json()["lab_id"])
        return self.labs[-1]

    def _remember(self, lab_id: int) -> None:
        if lab_id not in self.labs:
            self.labs.append(lab_id)


def first_visit(learner: Learner) -> None:
    lab_id = learner.launch()
    learner.wait_for(lab_id, "running")
    learner.keepalive(lab_id)
    learner.use_desktop(lab_id)
    learner.check_my_work(lab_id)
    learner.leave(lab_id)


def second_visit(learner: Learner) -> None:
    """Every fourth learner comes back (resume), every fourth other one resets; the rest stay away."""
    if learner.index % 4 == 0:
        assert learner.launch() == learner.labs[0], "coming back opens the same lab"
        learner.wait_for(learner.labs[0], "running")
    elif learner.index % 4 == 1:
        learner.wait_for(learner.reset(learner.labs[0]), "running")


def admin_deletes_everything(stack: Stack, lab_ids: list[int]) -> None:
    """The console's bulk delete of every live lab, posted at once to the first and the last web process."""
    browsers = [_admin(url) for url in (stack.web_urls[0], stack.web_urls[-1])]  # one process: twice the same

    def post(admin: tuple[str, requests.Session, str]) -> None:
        url, http, token = admin
        data = {"csrf_token": token, "action": "delete", "confirm": "yes", "lab": [str(i) for i in lab_ids]}
        assert http.post(url + "/admin/labs/bulk", data=data, timeout=60).status_code == 200

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(post, browsers))


def _admin(url: str) -> tuple[str, requests.Session, str]:
    """A browser signed in to the console as `root` on `url`, and the CSRF token of its labs page."""
    http = browser()
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(url + "/admin/login", timeout=30).text)
    assert token, "no sign-in form"
    signed = http.post(url + "/admin/login", data={"username": "root", "password": ADMIN_PASSWORD, "csrf_token": token[1]}, timeout=30)
    assert signed.url == url + "/admin/", signed.text[:300]
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(url + "/admin/labs", timeout=30).text)
    assert token, "no form on the labs page"
    return url, http, token[1]


def run(stack: Stack, rt: Runtime, lms: SigningPlatform, guacd: GuacdDouble, learners: int, fake_dir: Path,
        threads: int = 10) -> Outcome:
    """The whole day on a started stack; returns what it left (see the module docstring)."""
    started = time.monotonic()
    sessions_before = _relayed(guacd)
    people = [Learner(index, stack, lms) for index in range(learners)]
    figures: dict[str, float] = {}
    with ThreadPoolExecutor(threads) as pool:
        _phase(figures, "first visits", lambda: list(pool.map(first_visit, people)))
        _phase(figures, "idle sweep", lambda: _wait_states(rt, [p.labs[0] for p in people], {"suspended"}))
        _phase(figures, "second visits", lambda: list(pool.map(second_visit, people)))
    live = [lab for p in people for lab in p.labs if _state(rt, lab) in ("running", "suspended")]
    _phase(figures, "admin delete", lambda: admin_deletes_everything(stack, live))
    _phase(figures, "deleted", lambda: _wait_states(rt, [lab for p in people for lab in p.labs], {"deleted"}))
    outcome = _collect(rt, people, fake_dir, _relayed(guacd) - sessions_before)
    outcome.seconds, outcome.figures = time.monotonic() - started, figures
    with rt.session() as db:
        backend = db.scalars(select(Backend)).one()
    outcome.reconciled = schedule.reconcile_backend(rt, backend.id)
    outcome.left_on_backend = [m.lab_id for m in FakeConnector("fake", backend.config).list_managed()]
    return outcome


def day(shape: Shape, work: Path, settings_for: Callable[..., Settings], redis: Redis, lms: SigningPlatform,
        guacd: GuacdDouble, learners: int, database: str) -> Outcome:
    """The class's day on a stack of `shape` over the empty database `database` and `redis` (flushed
    first); `settings_for(database_url, data_dir, **overrides)` makes the settings (the tests' or a
    benchmark's). Sweeps every 2 s (production: 15 s), a leave counts after 1 s, reconciling every 5 s."""
    redis.flushdb()
    work.mkdir(parents=True)
    ports = [free_port() for _ in range(shape.web)]
    settings = settings_for(
        database, work, public_url=f"http://127.0.0.1:{ports[0]}", default_backend="fake", idle_suspend_after=600,
        keepalive_interval=5, leave_grace=1, sweep_interval=2, reconcile_interval=5, guacd_check_interval=1,
        guacd_hosts=(f"127.0.0.1:{guacd.address[1]}",),
    )
    rt = Runtime(settings, redis=redis)
    try:
        seed(settings, rt, lms, work / "fake")
        started = time.monotonic()
        with Stack(settings, work, shape, QUEUES, ports) as stack:
            up = time.monotonic() - started
            outcome = run(stack, rt, lms, guacd, learners, work / "fake")
            stopping = time.monotonic()
        outcome.figures = {"start processes": up, **outcome.figures, "stop processes": time.monotonic() - stopping}
        return outcome
    finally:
        rt.close()


def _phase(figures: dict[str, float], name: str, step: Callable[[], object]) -> None:
    started = time.monotonic()
    step()
    figures[name] = time.monotonic() - started


def _state(rt: Runtime, lab_id: int) -> str:
    with rt.session() as db:
        return db.get(Lab, lab_id).state  # type: ignore[union-attr]


def _wait_states(rt: Runtime, lab_ids: list[int], states: set[str]) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        with rt.session() as db:
            seen = dict(db.execute(select(Lab.id, Lab.state).where(Lab.id.in_(lab_ids))).all())
        behind = {lab: state for lab, state in seen.items() if state not in states}
        if not behind and len(seen) == len(lab_ids):
            return
        assert time.monotonic() < deadline, f"labs not yet {states}: {behind}"
        time.sleep(0.2)


def _relayed(guacd: GuacdDouble) -> int:
    """Desktop sessions whose learner's key press reached guacd."""
    return sum(1 for record in guacd.connections if record.ready and ("key", ("65307", "1")) in record.received)


def _collect(rt: Runtime, people: list[Learner], fake_dir: Path, tunnel_sessions: int) -> Outcome:
    with rt.session() as db:
        labs = {lab.id: lab for lab in db.scalars(select(Lab))}
        subjects = dict(db.execute(select(User.id, User.subject)).all())
        events = [(e.lab_id, e.from_state, e.to_state, e.job_id) for e in db.scalars(select(LabEvent).order_by(LabEvent.id))]
        scores = [(a.lab_id, a.state, a.score_given) for a in db.scalars(select(CheckAttempt).order_by(CheckAttempt.id))]
    learners: dict[str, dict[str, Any]] = {}
    for lab in sorted(labs.values(), key=lambda lab: lab.id):
        mine = learners.setdefault(subjects[lab.user_id], {"labs": [], "scores": []})
        path = [to for lab_id, _, to, _ in events if lab_id == lab.id]
        mine["labs"].append({"path": path, "final": lab.state})
        mine["scores"] += [(state, score) for lab_id, state, score in scores if lab_id == lab.id]
    asked = {lab for person in people for lab in person.labs}
    return Outcome(learners, read_call_log(fake_dir), events, asked, tunnel_sessions)
