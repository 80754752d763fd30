"""The LMS's score endpoint failing for a while: 503, then hanging, then back, with six learners graded
during the outage, two real `labdesk worker` processes delivering, and the outbox sweep run again and
again, twice at once from two processes, while duplicate jobs of the same rows are in the queues.

What must hold: every score reaches the LMS exactly once (the proxy in front of the LMS double counts the
POSTs that reached it, per learner: one each), with the very payload recorded at grading time; none is
lost; and during the outage each learner's "Check my work" result says their score is recorded and
waiting to be sent. The tests/lti modules cover one score through a simple outage; this is the crowd.

The back-off between attempts (10 s, then 20 s) is not waited out: as time passing would, the test ages
the rows (their `next_attempt_at` set to now) and releases their scheduled retry jobs, and runs the sweep
on top. (The sweep alone would not hurry them: its job id for a row is the scheduled retry's, and rq does
not queue an id it holds as scheduled.)
Figures (attempts made, seconds from the LMS's recovery to the last delivery) are printed (-s).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from rq import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import select, update

from app import create_app
from broker import services
from broker.attempt_views import GRADEBOOK
from broker.clock import utcnow
from broker.config import Settings
from broker.dispatch import DEFAULT_QUEUE
from broker.models import ScoreOutbox
from broker.runtime import Runtime
from lti import outbox
from tests.conftest import make_settings
from tests.grading.test_attempts import done_attempt
from tests.lti.platform_double import PlatformDouble, connect, serve_platform
from tests.support.fake_labs import running_lab
from tests.support.fault_proxy import FaultProxy
from tests.support.http import Learner, LiveServer, serve
from tests.support.waiting import wait_until
from tests.support.workers import ROOT, WorkerPool, settings_env
from tests.support.world import World

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
CTX = "course-fake"  # make_world's course
SCORES = r"/scores$"
LEARNERS = [f"learner-{n}" for n in range(1, 7)]
SWEEPS = """
from broker import runtime
from broker.config import load_settings
from broker.runtime import Runtime
from lti import outbox
rt = Runtime(load_settings())
runtime.install(rt)
print(sum(outbox.sweep(rt) for _ in range({times})))
"""


@pytest.fixture
def settings(pg_only: str, tmp_path: Path, redis_client: Any) -> Settings:
    return make_settings(pg_only, tmp_path, lti_http_timeout=1)


@pytest.fixture
def double(rt: Runtime) -> Iterator[PlatformDouble]:
    yield from serve_platform(rt)


@pytest.fixture
def proxy(double: PlatformDouble) -> Iterator[FaultProxy]:
    found = FaultProxy(double.url)
    yield found
    found.close()


@pytest.fixture
def server(rt: Runtime) -> Iterator[LiveServer]:
    yield from serve(create_app(rt.settings, rt))


def rows(rt: Runtime) -> list[ScoreOutbox]:
    with rt.session() as session:
        return list(session.scalars(select(ScoreOutbox).order_by(ScoreOutbox.id)))


def firsts(rt: Runtime) -> list[ScoreOutbox]:
    """Each learner's first score (their second waits for it)."""
    found: dict[int, ScoreOutbox] = {}
    for row in rows(rt):
        found.setdefault(row.user_id, row)
    return list(found.values())


def age_rows(rt: Runtime) -> None:
    """The back-off has passed: every pending row is due now (as the clock would make it)."""
    with rt.session() as session:
        session.execute(update(ScoreOutbox).where(ScoreOutbox.state == "pending").values(next_attempt_at=utcnow()))
        session.commit()


def sweep_from_two_processes(settings: Settings, times: int = 3) -> list[int]:
    """The outbox sweep `times` times in each of two processes started together; rows each enqueued."""
    env = settings_env(settings)
    script = SWEEPS.format(times=times)
    started = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    found = []
    for process in started:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        found.append(int(out.split()[-1]))
    return found


def release_retry_jobs(rt: Runtime) -> int:
    """Queue every scheduled back-off retry now, as if its time had come (against rows already handled,
    each must find its row sent or not due, and send nothing)."""
    queue = Queue(DEFAULT_QUEUE, connection=rt.redis)
    registry = ScheduledJobRegistry(queue=queue)
    ids = registry.get_job_ids()
    for job_id in ids:
        job = queue.fetch_job(job_id)
        registry.remove(job_id)
        if job is not None:
            queue.enqueue_job(job)
    return len(ids)


def queue_drained(rt: Runtime) -> bool:
    queue = Queue(DEFAULT_QUEUE, connection=rt.redis)
    return queue.count == 0 and StartedJobRegistry(queue=queue).count == 0


class Class:
    """Six learners signed in to the live app, each with a running lab, in a course graded by the double."""

    def __init__(self, rt: Runtime, world: World, fake_dir: Path, double: PlatformDouble, proxy: FaultProxy, server: LiveServer) -> None:
        item = double.add_lineitem(CTX, "link-1", score_maximum=8)  # the line item the launch named
        connect(rt, world.activity_id, CTX, double, lineitem_url=item["id"].replace(double.url, proxy.url))
        self.rt, self.world, self.double, self.proxy = rt, world, double, proxy
        self.browsers: dict[str, Learner] = {}
        self.users: dict[str, int] = {}
        self.labs: dict[str, int] = {}
        for name in LEARNERS:
            double.enrol(CTX, name)
            browser = Learner(server.url)
            assert browser.sign_in(name).status_code == 200
            user_id = services.user_for(rt, "dev", name, name)
            self.browsers[name], self.users[name] = browser, user_id
            self.labs[name] = running_lab(rt, world, fake_dir, user_id=user_id)

    def grade_everyone(self) -> dict[str, list[dict[str, Any]]]:
        """Each learner's check finishes and is graded, twice (the second raises the grade): the payloads
        each learner's two scores were recorded with, oldest first."""
        for n, name in enumerate(LEARNERS):
            done_attempt(self.rt, self.world, self.labs[name], [True, n % 2 == 0, False], user_id=self.users[name])
            done_attempt(self.rt, self.world, self.labs[name], [True, True, True], user_id=self.users[name])
        recorded: dict[str, list[dict[str, Any]]] = {}
        for row in rows(self.rt):
            recorded.setdefault(row.payload["userId"], []).append(row.payload)
        assert sorted(recorded) == LEARNERS and {len(p) for p in recorded.values()} == {2}
        return recorded

    def gradebook_seen_by(self, name: str) -> dict[str, str]:
        """The gradebook line of the learner's latest check, as their lab page reads it."""
        answer = self.browsers[name].get(f"/api/labs/{self.labs[name]}/attempts/latest")
        assert answer.status_code == 200, answer.text
        return answer.json()["gradebook"]

    def posts_that_reached_the_lms(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for seen in self.proxy.forwarded("POST", SCORES):
            payload = seen.json()
            found.setdefault(payload["userId"], []).append(payload)  # type: ignore[index]
        return found


@pytest.fixture
def crowd(rt: Runtime, world: World, fake_dir: Path, double: PlatformDouble, proxy: FaultProxy, server: LiveServer) -> Class:
    return Class(rt, world, fake_dir, double, proxy, server)


def test_scores_graded_while_the_lms_fails_and_hangs_are_each_delivered_once_unchanged(
    rt: Runtime, settings: Settings, crowd: Class, proxy: FaultProxy, double: PlatformDouble, workers: WorkerPool
) -> None:
    proxy.fail(503, path=SCORES)
    workers.start(2)
    recorded = crowd.grade_everyone()

    wait_until(lambda: all(r.attempts >= 1 for r in firsts(rt)), timeout=30, what="a first refused attempt of every learner's score")
    for name in LEARNERS:
        assert crowd.gradebook_seen_by(name) == {"state": "waiting", "message": GRADEBOOK["waiting"]}
    sweep_from_two_processes(settings)  # while rows back off (or, on a slow machine, are due again)

    proxy.hang(path=SCORES)  # now the LMS takes the request and never answers (the 1 s timeout fires)
    age_rows(rt)
    release_retry_jobs(rt)
    sweep_from_two_processes(settings)
    wait_until(lambda: all("ReadTimeout" in r.last_error for r in firsts(rt)), timeout=30, what="a timed-out attempt of every learner's score")
    assert {r.state for r in rows(rt)} == {"pending"} and proxy.forwarded("POST", SCORES) == []
    assert crowd.gradebook_seen_by(LEARNERS[0])["state"] == "waiting"

    proxy.pass_through()
    recovered = utcnow()
    age_rows(rt)
    release_retry_jobs(rt)
    swept = [sweep_from_two_processes(settings) for _ in range(2)]  # overlapping sweeps: duplicate jobs of the same rows
    wait_until(lambda: {r.state for r in rows(rt)} == {"sent"}, timeout=60, what="every score sent")
    delivered_in = (max(r.sent_at for r in rows(rt)) - recovered).total_seconds()
    release_retry_jobs(rt)
    sweep_from_two_processes(settings)
    wait_until(lambda: queue_drained(rt), timeout=30, what="every leftover job run")

    reached = crowd.posts_that_reached_the_lms()
    assert reached == recorded  # per learner: each score once, in order, exactly as recorded
    assert {name: double.scores_for(name) for name in LEARNERS} == recorded
    for name in LEARNERS:
        assert crowd.gradebook_seen_by(name) == {"state": "sent", "message": GRADEBOOK["sent"]}
    attempts = [r.attempts for r in rows(rt)]
    refused = [s.fault for s in proxy.faulted("POST", SCORES)]
    print(f"\nLMS outage: {len(attempts)} scores of {len(LEARNERS)} learners, {sum(attempts)} failed attempts ({refused.count('fail')} answered 503, {refused.count('hang')} hung), "
          f"all delivered {delivered_in:.1f} s after recovery, each once; the sweeps after recovery enqueued {swept}")


def test_two_deliveries_of_one_score_at_the_same_moment_send_it_once(
    rt: Runtime, crowd: Class, double: PlatformDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs of the same row (the sweep's and the one an older score's delivery hands on) both find it
    due and first in line at the same moment: the claim (compare-and-set) lets one send, the other stands back."""
    recorded = crowd.grade_everyone()
    first = firsts(rt)[0]
    both_checked = threading.Barrier(2, timeout=10)
    checked = outbox._older_pending

    def in_step(session: Any, row: ScoreOutbox) -> bool:
        found = checked(session, row)
        both_checked.wait()  # both have read the row as due; now both try to claim it
        return found

    monkeypatch.setattr(outbox, "_older_pending", in_step)
    results: list[str] = []
    jobs = [threading.Thread(target=lambda: results.append(outbox.deliver(first.id))) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=30)

    assert sorted(results) == ["sent", "taken by another worker"]
    name = first.payload["userId"]
    assert double.scores_for(name) == recorded[name][:1] and len(crowd.proxy.forwarded("POST", SCORES)) == 1


def test_a_score_the_lms_took_while_its_answer_was_lost_counts_as_sent_once(
    rt: Runtime, crowd: Class, proxy: FaultProxy, double: PlatformDouble
) -> None:
    """The LMS stores the score, the answer never arrives; the retry carries the same timestamp and the
    LMS refuses it (409, not newer): the score is in the gradebook once and the learner reads "sent"."""
    recorded = crowd.grade_everyone()
    first = firsts(rt)[0]
    name = first.payload["userId"]
    proxy.lose_answer(None, path=SCORES)  # forwarded, then the connection is dropped

    assert outbox.deliver(first.id) == "retrying"
    assert double.scores_for(name) == recorded[name][:1], "the LMS took it"

    proxy.pass_through()
    age_rows(rt)
    assert outbox.deliver(first.id) == "sent"
    assert double.scores_for(name) == recorded[name][:1]
    [second] = [r for r in rows(rt) if r.user_id == first.user_id and r.id != first.id]
    assert outbox.deliver(second.id) == "sent", "the learner's next score is not held up behind it"
    assert double.scores_for(name) == recorded[name]
    assert {r.state for r in rows(rt) if r.user_id == first.user_id} == {"sent"}
    assert crowd.gradebook_seen_by(name) == {"state": "sent", "message": GRADEBOOK["sent"]}
