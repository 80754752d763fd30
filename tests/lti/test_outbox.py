"""Grades through the persistent outbox: recorded in the database first, delivered by real `labdesk worker`
processes over real HTTP to a test LMS (tests/lti/platform_double.py), on SQLite and PostgreSQL.

What must hold: the LMS gets exactly the recorded payload; an outage loses nothing and changes nothing
(same timestamp after the back-off); one learner's scores arrive in order with increasing timestamps;
one access token serves many deliveries and a 401 fetches a new one; a refusal fails the row with the
LMS's reason, and `labdesk grades retry` sends it again.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest
from rq import Queue
from rq.cron import CronScheduler
from sqlalchemy import select

from broker import runtime
from broker.clock import set_clock, utcnow
from broker.dispatch import DEFAULT_QUEUE
from broker.models import ScoreOutbox
from broker.runtime import Runtime
from broker.schedule import register_cron
from broker.scores import InvalidScore, record_score
from lti import outbox
from lti.ags import scores_url
from lti.models import LinkServices
from tests.lti.platform_double import ALL_SCOPES, SCOPE_LINEITEM, SCOPE_NRPS, PlatformDouble, connect, serve_platform
from tests.support.inline import Clock, clock  # noqa: F401  (a fixture: clock)
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, add_learner
from tests.test_cli import cli_env, invoke

CTX = "course-fake"  # make_world's course
LEARNER = "learner-1"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$")


@pytest.fixture
def double(rt: Runtime) -> Iterator[PlatformDouble]:
    yield from serve_platform(rt)


@pytest.fixture
def graded(rt: Runtime, world: World, double: PlatformDouble) -> World:
    """The world's activity launched from the double with AGS and NRPS; the learner is enrolled."""
    connect(rt, world.activity_id, CTX, double)
    double.enrol(CTX, LEARNER)
    return world


def score(rt: Runtime, world: World, given: float = 7, user_id: int | None = None, **extra: Any) -> int:
    return record_score(rt, world.activity_id, user_id or world.user_id, given, 10, "Completed", "FullyGraded", **extra)


def row(rt: Runtime, outbox_id: int) -> ScoreOutbox:
    with rt.session() as session:
        found = session.get(ScoreOutbox, outbox_id)
        assert found is not None
        return found


def wait_row(rt: Runtime, outbox_id: int, state: str, timeout: float = 30) -> ScoreOutbox:
    wait_until(lambda: row(rt, outbox_id).state == state, timeout=timeout, what=f"score {outbox_id} {state}")
    return row(rt, outbox_id)


def received(double: PlatformDouble) -> list[dict[str, Any]]:
    return [r.payload for r in double.received]


# -- through real workers ----------------------------------------------------------------------------------
def test_a_score_reaches_the_platform_with_the_payload_it_was_recorded_with(
    rt: Runtime, graded: World, double: PlatformDouble, workers: WorkerPool
) -> None:
    workers.start(1)
    first = score(rt, graded, 7, comment="All four services configured.")
    sent = wait_row(rt, first, "sent")

    assert received(double) == [sent.payload]
    payload = sent.payload
    assert {k: v for k, v in payload.items() if k != "timestamp"} == {
        "userId": LEARNER, "scoreGiven": 7, "scoreMaximum": 10, "activityProgress": "Completed",
        "gradingProgress": "FullyGraded", "comment": "All four services configured.",
    }
    assert TIMESTAMP.match(payload["timestamp"]), payload["timestamp"]
    assert (sent.attempts, sent.last_error) == (0, "") and sent.sent_at is not None

    # No line item came with the launch: LabDesk created one for the resource link and remembers it.
    (item,) = double.course(CTX).lineitems.values()
    assert {k: item[k] for k in ("label", "resourceLinkId", "tag", "scoreMaximum")} == {
        "label": "Test lab", "resourceLinkId": "link-1", "tag": "labdesk", "scoreMaximum": 10,
    }
    with rt.session() as session:
        assert session.get(LinkServices, graded.activity_id).lineitem_url == item["id"]
    second = score(rt, graded, 9)
    wait_row(rt, second, "sent")
    assert len(double.course(CTX).lineitems) == 1
    assert [p["scoreGiven"] for p in received(double)] == [7, 9]


def test_an_outage_keeps_scores_pending_with_back_off_and_delivers_them_unchanged_and_in_order(
    rt: Runtime, graded: World, double: PlatformDouble, workers: WorkerPool
) -> None:
    double.down = True
    workers.start(1)
    first, second = score(rt, graded, 4), score(rt, graded, 8)

    wait_until(lambda: row(rt, first).attempts >= 1, what="a first failed attempt")
    waiting = row(rt, first)
    assert waiting.state == "pending" and "503" in waiting.last_error
    assert waiting.next_attempt_at > utcnow() + timedelta(seconds=5)  # backing off (10 s), not hammering
    assert (row(rt, second).state, row(rt, second).attempts) == ("pending", 0)  # never sent before the first
    assert double.received == []

    double.down = False
    wait_row(rt, second, "sent", timeout=40)
    assert received(double) == [row(rt, first).payload, row(rt, second).payload]  # same bytes, same order
    assert row(rt, first).payload == waiting.payload and row(rt, first).state == "sent"


def test_scores_of_one_learner_arrive_in_order_with_increasing_timestamps(
    rt: Runtime, graded: World, double: PlatformDouble, workers: WorkerPool
) -> None:
    workers.start(3)
    ids = [score(rt, graded, given) for given in range(1, 7)]
    for outbox_id in ids:
        wait_row(rt, outbox_id, "sent")

    stored = [row(rt, outbox_id).payload for outbox_id in ids]
    assert received(double) == stored  # the LMS refuses (409) any timestamp that is not newer
    stamps = [datetime.fromisoformat(p["timestamp"]) for p in stored]
    assert stamps == sorted(set(stamps))


def test_one_token_serves_many_deliveries_across_workers_and_a_401_fetches_a_new_one(
    rt: Runtime, graded: World, double: PlatformDouble, workers: WorkerPool
) -> None:
    learners = [graded.user_id]
    for subject in ("learner-2", "learner-3", "learner-4"):
        double.enrol(CTX, subject)
        learners.append(add_learner(rt, subject))
    workers.start(2)
    ids = [score(rt, graded, 5, user_id=user) for user in learners]
    for outbox_id in ids:
        wait_row(rt, outbox_id, "sent")
    assert double.token_requests == 1
    assert len(rt.redis.keys("labdesk:lti:token:*")) == 1

    double.revoke_tokens()  # the LMS forgot its tokens: the cached one now gets 401
    again = score(rt, graded, 6)
    wait_row(rt, again, "sent")
    assert double.unauthorized == 1
    assert double.token_requests == 2
    assert len(received(double)) == 5


def test_a_refused_score_fails_with_the_platforms_reason_and_grades_retry_sends_it_again(
    rt: Runtime, graded: World, double: PlatformDouble, workers: WorkerPool
) -> None:
    stranger = add_learner(rt, "stranger")  # not (yet) enrolled in the LMS course
    workers.start(1)
    refused = score(rt, graded, 3, user_id=stranger)
    failed = wait_row(rt, refused, "failed")
    assert "400" in failed.last_error and "'stranger' is not a member of course course-fake" in failed.last_error
    assert failed.attempts == 1

    env = cli_env(rt.settings)
    listed = invoke(env, "grades", "list", "--state", "failed", "--json")
    runtime.install(rt)
    assert listed.exit_code == 0, listed.output
    assert [(r["id"], r["user"], r["last_error"]) for r in json.loads(listed.stdout)] == [
        (refused, "stranger", failed.last_error)
    ]

    double.enrol(CTX, "stranger")
    retried = invoke(env, "grades", "retry", str(refused))
    runtime.install(rt)
    assert (retried.exit_code, retried.stdout) == (0, f"1 score(s) queued again: {refused}\n")
    sent = wait_row(rt, refused, "sent")
    assert sent.payload == failed.payload
    assert received(double) == [failed.payload]


# -- the CLI's edges ---------------------------------------------------------------------------------------
def test_grades_retry_refuses_what_it_cannot_retry(rt: Runtime, graded: World) -> None:
    pending = score(rt, graded)
    env = cli_env(rt.settings)
    try:
        cases = {
            (str(pending),): f"error: score {pending} is pending; only failed scores can be retried",
            ("999",): "error: no score 999",
        }
        for args, message in cases.items():
            result = invoke(env, "grades", "retry", *args)
            assert (result.exit_code, result.stderr.strip()) == (1, message)
        assert invoke(env, "grades", "retry").exit_code == 2  # neither an id nor --all-failed
        assert invoke(env, "grades", "retry", "--all-failed", "--json").stdout.strip().startswith('{\n  "requeued": []')
    finally:
        runtime.install(rt)


# -- recording ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "maximum", "activity", "grading", "message"),
    [
        (11, 10, "Completed", "FullyGraded", "score_given must be between 0 and score_maximum"),
        (-1, 10, "Completed", "FullyGraded", "score_given must be between 0"),
        (1, 0, "Completed", "FullyGraded", "score_maximum must be greater than 0"),
        (float("nan"), 10, "Completed", "FullyGraded", "score_given must be a finite number"),
        (True, 10, "Completed", "FullyGraded", "score_given must be a finite number"),
        (1, 10, "Done", "FullyGraded", "activity_progress must be one of Initialized, Started"),
        (1, 10, "Completed", "Graded", "grading_progress must be one of FullyGraded"),
    ],
)
def test_record_score_refuses_what_the_lms_would(
    rt: Runtime, world: World, given: Any, maximum: Any, activity: str, grading: str, message: str
) -> None:
    with pytest.raises(InvalidScore, match=re.escape(message)):
        record_score(rt, world.activity_id, world.user_id, given, maximum, activity, grading)
    with rt.session() as session:
        assert session.scalars(select(ScoreOutbox)).all() == []


def test_record_score_names_a_missing_user_or_activity(rt: Runtime, world: World) -> None:
    with pytest.raises(InvalidScore, match="no user 999"):
        record_score(rt, world.activity_id, 999, 1, 2, "Completed", "FullyGraded")
    with pytest.raises(InvalidScore, match="no activity 999"):
        record_score(rt, 999, world.user_id, 1, 2, "Completed", "FullyGraded")


def test_timestamps_only_increase_when_the_clock_stands_still_or_steps_back(rt: Runtime, world: World, clock: Clock) -> None:
    frozen = utcnow()
    set_clock(lambda: frozen)
    stamps = [row(rt, score(rt, world)).payload["timestamp"] for _ in range(3)]
    set_clock(lambda: frozen - timedelta(hours=1))
    stamps.append(row(rt, score(rt, world)).payload["timestamp"])
    parsed = [datetime.fromisoformat(s) for s in stamps]
    assert [(b - a) for a, b in zip(parsed, parsed[1:])] == [timedelta(milliseconds=1)] * 3
    assert all(TIMESTAMP.match(s) for s in stamps)


def test_scores_recorded_at_the_same_moment_get_distinct_increasing_timestamps(rt: Runtime, world: World) -> None:
    frozen = utcnow()
    set_clock(lambda: frozen)
    try:
        threads = [threading.Thread(target=lambda: [score(rt, world) for _ in range(4)]) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        set_clock(None)
    with rt.session() as session:
        rows = session.scalars(select(ScoreOutbox).order_by(ScoreOutbox.id)).all()
    stamps = [datetime.fromisoformat(r.payload["timestamp"]) for r in rows]
    assert len(rows) == 24 and stamps == sorted(set(stamps))


def test_the_score_is_kept_and_the_job_queued(rt: Runtime, world: World) -> None:
    outbox_id = score(rt, world)
    assert row(rt, outbox_id).state == "pending"
    assert Queue(DEFAULT_QUEUE, connection=rt.redis).job_ids == [f"score-{outbox_id}-0"]


# -- delivery rules, in this process ---------------------------------------------------------------------------
def test_back_off_doubles_from_ten_seconds_up_to_ten_minutes() -> None:
    assert [outbox.backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]


def test_a_newer_score_waits_for_an_older_pending_one(rt: Runtime, graded: World, double: PlatformDouble) -> None:
    first, second = score(rt, graded, 1), score(rt, graded, 2)
    assert outbox.deliver(second) == "waiting for an older score"
    assert double.received == []
    assert outbox.deliver(first) == "sent"
    assert Queue(DEFAULT_QUEUE, connection=rt.redis).job_ids[-1] == f"score-{second}-0-after-{first}"  # handed on
    assert outbox.deliver(second) == "sent"
    assert outbox.deliver(second) == "not pending"
    assert [p["scoreGiven"] for p in received(double)] == [1, 2]


def test_a_score_still_undelivered_after_the_give_up_time_fails(
    rt: Runtime, graded: World, double: PlatformDouble, clock: Clock
) -> None:
    outbox_id = score(rt, graded)
    double.down = True
    assert outbox.deliver(outbox_id) == "retrying"
    clock.advance(rt.settings.outbox_give_up_after + 1)
    assert outbox.deliver(outbox_id) == "failed"
    failed = row(rt, outbox_id)
    assert failed.state == "failed" and failed.last_error.startswith("gave up after 2 attempts:") and "503" in failed.last_error


def test_the_sweep_enqueues_the_due_head_of_each_learners_line(rt: Runtime, graded: World, double: PlatformDouble, clock: Clock) -> None:
    other = add_learner(rt, "learner-2")
    first, _second, theirs = score(rt, graded, 1), score(rt, graded, 2), score(rt, graded, 3, user_id=other)
    queue = Queue(DEFAULT_QUEUE, connection=rt.redis)
    queue.empty()  # as if Redis had lost the jobs
    assert outbox.sweep(rt) == 2
    assert sorted(queue.job_ids) == sorted([f"score-{first}-0", f"score-{theirs}-0"])

    queue.empty()
    double.down = True
    outbox.deliver(first)  # fails once: due again in 10 s
    assert outbox.sweep(rt) == 1  # only the other learner's row; the first learner's line waits
    clock.advance(11)
    assert outbox.sweep(rt) == 2


def test_a_line_item_the_platform_already_has_is_found_not_created(rt: Runtime, world: World, double: PlatformDouble) -> None:
    connect(rt, world.activity_id, CTX, double, scopes=frozenset(ALL_SCOPES - {SCOPE_LINEITEM}))
    double.enrol(CTX, LEARNER)
    double.add_lineitem(CTX, "other-link")
    existing = double.add_lineitem(CTX, "link-1")
    assert outbox.deliver(score(rt, world)) == "sent"
    assert len(double.course(CTX).lineitems) == 2
    assert double.received[0].lineitem == 2
    with rt.session() as session:
        assert session.get(LinkServices, world.activity_id).lineitem_url == existing["id"]


def test_no_line_item_and_no_right_to_create_one_fails_with_a_reason(rt: Runtime, world: World, double: PlatformDouble) -> None:
    connect(rt, world.activity_id, CTX, double, scopes=frozenset(ALL_SCOPES - {SCOPE_LINEITEM, SCOPE_NRPS}))
    outbox_id = score(rt, world)
    assert outbox.deliver(outbox_id) == "failed"
    assert "did not grant the lineitem scope" in row(rt, outbox_id).last_error


def test_an_activity_never_launched_with_grades_fails_with_a_reason(rt: Runtime, world: World) -> None:
    outbox_id = score(rt, world)
    assert outbox.deliver(outbox_id) == "failed"
    assert "has no LMS grade service" in row(rt, outbox_id).last_error


def test_scores_go_before_the_query_string_of_a_line_item_url() -> None:
    assert scores_url("https://lms.example/mod/lti/services.php/2/lineitems/3/lineitem?type_id=1") == (
        "https://lms.example/mod/lti/services.php/2/lineitems/3/lineitem/scores?type_id=1"
    )
    assert scores_url("https://lms.example/api/lti/courses/1/line_items/5/") == "https://lms.example/api/lti/courses/1/line_items/5/scores"


def test_the_outbox_sweep_is_on_the_cron_at_its_interval(rt: Runtime) -> None:
    cron = CronScheduler(connection=rt.redis)
    register_cron(cron, rt.settings)
    (job,) = [j for j in cron.get_jobs() if j.name == "outbox"]
    assert (job.func, job.interval, job.queue_name) == (outbox.deliver_due, rt.settings.outbox_interval, DEFAULT_QUEUE)

