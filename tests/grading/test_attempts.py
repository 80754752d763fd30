"""Check attempts (broker.attempts): starting one, running its checks for real (the fake connector's
`local` target and the real `local` grading hook), scoring, the grading policies, the grade in the
outbox, what the pages get (exam mode included), and the automatic checks on suspend and at a deadline.

Database tests run on SQLite and PostgreSQL; the ones through a real `labdesk worker` on PostgreSQL.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from rq import Queue
from rq.cron import CronScheduler
from sqlalchemy import select

from broker import attempt_views, attempts, grades, grading, grading_settings, runtime, schedule, services
from broker.attempts import NotGradable
from broker.grades import Scored, policy_choice
from broker.catalogue import load
from broker.clock import set_clock, utcnow
from broker.dispatch import DEFAULT_QUEUE
from broker.errors import InvalidTransition
from broker.grading import CheckOutcome, CheckScript, CheckTarget
from broker.lifecycle import LabState
from broker.models import Activity, Backend, CheckAttempt, Image, Lab, LabEvent, ScoreOutbox
from broker.runtime import Runtime
from broker.services import NotFound
from tests.catalogue import ENTRY, make_root, write_entry
from tests.support.fake_labs import running_lab, set_spec
from tests.support.waiting import wait_until
from tests.support.workers import ROOT, WorkerPool
from tests.support.world import World, add_learner

S = LabState
QUEUE = "labdesk-backend-fake"

# Three checks of 4 weight in all, scaled to 8 points: a script of the shipped catalogue (weight 2) and
# two built-ins. The lab user is not in passwd, so the checks look in $HOME: the fake lab's directory.
CHECKS = '''
[[checks]]
id = "notes"
title = "Write done in ~/notes.txt"
builtin = "file-contains"
path = "~/notes.txt"
pattern = "^done$"
hint = "Write the word done on a line of its own."

[[checks]]
id = "tool"
title = "Install ~/bin/tool"
builtin = "command-succeeds"
command = "ls bin/tool"
'''


def graded_spec(tmp_path: Path) -> dict[str, Any]:
    """A real catalogue entry's normalized spec: hello-file (the shipped script, weight 2), notes, tool."""
    root = make_root(tmp_path / "catalogue-root")
    (root / "checks" / "hello-file.sh").write_text((ROOT / "desktop-images/checks/hello-file.sh").read_text())
    text = (ENTRY.replace('tags = ["linux"]', 'tags = ["linux"]\nmax_score = 8').replace('name = "learner"', 'name = "nobody-here"')
            + CHECKS)
    return load(write_entry(root, "lab", text)).spec()


def set_activity(rt: Runtime, world: World, **fields: Any) -> None:
    with rt.session() as session:
        activity = session.get(Activity, world.activity_id)
        for name, value in fields.items():
            setattr(activity, name, value)
        session.commit()


@pytest.fixture
def graded(rt: Runtime, world: World, tmp_path: Path) -> World:
    set_spec(rt, world, graded_spec(tmp_path))
    return world


def attempt_row(rt: Runtime, attempt_id: int) -> CheckAttempt:
    with rt.session() as session:
        row = session.get(CheckAttempt, attempt_id)
        assert row is not None
        return row


def outbox(rt: Runtime) -> list[dict[str, Any]]:
    with rt.session() as session:
        return [row.payload for row in session.scalars(select(ScoreOutbox).order_by(ScoreOutbox.id))]


def do_the_work(home: Path, notes: str = "done\n", tool: bool = True, hello: bool = True) -> None:
    home.mkdir(parents=True, exist_ok=True)
    if hello:
        (home / "hello.txt").write_text("hi\n")
    (home / "notes.txt").write_text(notes)
    if tool:
        (home / "bin").mkdir(exist_ok=True)
        (home / "bin" / "tool").write_text("")


def run_now(rt: Runtime, world: World, lab_id: int, trigger: str = "learner") -> CheckAttempt:
    """start_check, then the job's function in this process (the worker tests run it in a worker)."""
    attempt_id = attempts.start_check(rt, world.user_id, lab_id, trigger)
    assert attempts.run_attempt(attempt_id) in ("done", "error")
    return attempt_row(rt, attempt_id)


# -- the policies, as pure functions ---------------------------------------------------------------------
def item(n: int, given: float, passed: int, total: int = 3, maximum: float = 8) -> Scored:
    return Scored(n, given, maximum, passed, total)


HISTORY = [item(1, 2, 1), item(2, 8, 3), item(3, 4, 2), item(4, 8, 3), item(5, 0, 0)]


@pytest.mark.parametrize(("policy", "upto", "chosen"), [
    ("latest", 5, 5), ("latest", 1, 1),
    ("best", 5, 4), ("best", 3, 2), ("best", 1, 1),  # the newest of equals
    ("first_passing", 1, 1), ("first_passing", 5, 2), ("first_passing", 3, 2),  # latest until one passes
])
def test_which_attempt_counts(policy: str, upto: int, chosen: int) -> None:
    picked = policy_choice(policy, HISTORY[:upto])
    assert picked is not None and picked.id == chosen


def test_no_finished_attempt_counts_for_nothing() -> None:
    assert all(policy_choice(policy, []) is None for policy in grades.POLICIES)
    assert policy_choice("best", [item(1, 3, 1, maximum=10), item(2, 2, 1, maximum=4)]).id == 2  # by share of the maximum


# -- starting an attempt ---------------------------------------------------------------------------------
def test_start_check_refuses_with_clear_messages(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    other = add_learner(rt, "someone-else")
    with pytest.raises(NotFound, match=r"^no lab 999 of user \d+$"):
        attempts.start_check(rt, graded.user_id, 999)
    with pytest.raises(NotFound, match=f"^no lab {lab_id} of user {other}$"):
        attempts.start_check(rt, other, lab_id)
    suspended = running_lab(rt, graded, fake_dir, user_id=other, state="suspended")
    with pytest.raises(InvalidTransition, match=f"^lab {suspended} is suspended; checks run only on a running lab: open the lab, then check again$"):
        attempts.start_check(rt, other, suspended)
    set_spec(rt, graded, {"checks": []})
    with pytest.raises(NotGradable, match="^this lab has nothing to check: image img-fake version 1 defines no checks$"):
        attempts.start_check(rt, graded.user_id, lab_id)
    with rt.session() as session:
        assert session.scalars(select(CheckAttempt)).all() == []
    assert Queue(QUEUE, connection=rt.redis).count == 0


def test_a_check_goes_before_a_launch_wave_already_queued_on_the_backend(rt: Runtime, graded: World, fake_dir: Path) -> None:
    """bench/soak.py: 1,000 launches in 90 s kept each "Check my work" 161 s behind them (docs/load.md)."""
    lab_id = running_lab(rt, graded, fake_dir)
    wave = [services.launch(rt, add_learner(rt, f"arriving-{n}"), graded.activity_id, "test").id for n in range(3)]
    queue = Queue(QUEUE, connection=rt.redis)
    assert len(queue.job_ids) == len(wave)

    attempt_id = attempts.start_check(rt, graded.user_id, lab_id)

    assert queue.job_ids[0] == f"check-{attempt_id}" and len(queue.job_ids) == len(wave) + 1


def test_one_attempt_at_a_time_per_lab(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    first = attempts.start_check(rt, graded.user_id, lab_id)
    assert attempts.start_check(rt, graded.user_id, lab_id) == first
    queue = Queue(QUEUE, connection=rt.redis)
    assert queue.job_ids == [f"check-{first}"]
    row = attempt_row(rt, first)
    assert (row.state, row.trigger, row.job_id) == ("queued", "learner", f"check-{first}")
    assert [(r["id"], r["state"], r["weight"], r["host"]) for r in row.results] == [
        ("hello-file", "pending", 2, "main"), ("notes", "pending", 1, "main"), ("tool", "pending", 1, "main")]

    assert attempts.run_attempt(first) == "done"
    assert attempts.run_attempt(first) == "skipped"  # a job run twice does nothing the second time
    second = attempts.start_check(rt, graded.user_id, lab_id, "instructor")
    assert second != first and attempt_row(rt, second).trigger == "instructor"


def test_two_clicks_at_the_same_moment_make_one_attempt(rt: Runtime, graded: World, fake_dir: Path) -> None:
    """The partial unique index keeps it to one under way even when both checks for one pass at once."""
    if rt.settings.sqlalchemy_url.startswith("sqlite"):
        pytest.skip("concurrent writers: PostgreSQL (production); SQLite serialises writes anyway")
    labs = [running_lab(rt, graded, fake_dir, user_id=add_learner(rt, f"clicker-{n}")) for n in range(6)]
    for lab_id in labs:
        with rt.session() as session:
            owner = session.get(Lab, lab_id).user_id
        gate = threading.Barrier(2)
        got: list[int] = []

        def click(lab_id: int = lab_id, owner: int = owner) -> None:
            gate.wait(timeout=10)
            got.append(attempts.start_check(rt, owner, lab_id))

        threads = [threading.Thread(target=click) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(got) == 2 and got[0] == got[1]
    with rt.session() as session:
        assert len(session.scalars(select(CheckAttempt)).all()) == len(labs)


def test_an_attempt_whose_job_died_does_not_block_the_next(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    with rt.session() as session:
        dead = CheckAttempt(lab_id=lab_id, user_id=graded.user_id, activity_id=graded.activity_id, state="running",
                            job_id="check-gone", created_at=utcnow() - timedelta(minutes=5), results=[])
        session.add(dead)
        session.commit()
        dead_id = dead.id
    fresh = attempts.start_check(rt, graded.user_id, lab_id)
    assert fresh != dead_id
    closed = attempt_row(rt, dead_id)
    assert (closed.state, closed.error) == ("error", "The check stopped before it finished. Run it again.")


# -- running the checks for real -------------------------------------------------------------------------
def test_the_checks_run_in_the_lab_and_the_score_goes_to_the_outbox(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    do_the_work(fake_dir, notes="almost\n", tool=False)

    first = run_now(rt, graded, lab_id)
    assert (first.state, first.score_given, first.score_maximum, first.error) == ("done", 4, 8, "")
    hello, notes, tool = first.results
    assert (hello["state"], hello["feedback"], hello["hint"]) == ("passed", "Found ~/hello.txt.", "")
    assert (notes["state"], notes["feedback"]) == ("failed", "~/notes.txt does not have the expected content yet.")
    assert notes["hint"] == "Write the word done on a line of its own."  # the check's own hint
    assert (tool["state"], tool["feedback"]) == ("failed", "The check command failed (exit status 2).")
    assert "bin/tool" in tool["hint"] and "No such file" in tool["hint"]  # no hint: the script's stderr
    assert all(r["seconds"] >= 0 and r["timed_out"] is False and r["truncated"] is False for r in first.results)
    assert first.finished_at is not None and first.finished_at >= first.created_at

    do_the_work(fake_dir)
    second = run_now(rt, graded, lab_id)
    assert (second.score_given, [r["state"] for r in second.results]) == (8, ["passed"] * 3)
    assert all(r["hint"] == "" for r in second.results)  # hints only for failed checks

    assert outbox(rt) == [
        {"userId": "learner-1", "scoreGiven": 4.0, "scoreMaximum": 8, "activityProgress": "Submitted",
         "gradingProgress": "FullyGraded", "comment": "1 of 3 checks passed", "timestamp": outbox(rt)[0]["timestamp"]},
        {"userId": "learner-1", "scoreGiven": 8.0, "scoreMaximum": 8, "activityProgress": "Completed",
         "gradingProgress": "FullyGraded", "comment": "3 of 3 checks passed", "timestamp": outbox(rt)[1]["timestamp"]},
    ]
    third = run_now(rt, graded, lab_id)  # the same result again: the gradebook already has it
    assert third.score_given == 8 and len(outbox(rt)) == 2


def done_attempt(rt: Runtime, world: World, lab_id: int, passed: list[bool], user_id: int | None = None) -> int:
    """A finished attempt as the job leaves it (three checks of weights 2, 1, 1 out of 8), then delivered."""
    weights = [2, 1, 1][: len(passed)]
    results = [{"id": f"c{i}", "title": f"C{i}", "weight": w, "state": "passed" if ok else "failed"} for i, (w, ok) in enumerate(zip(weights, passed))]
    with rt.session() as session:
        row = CheckAttempt(lab_id=lab_id, user_id=user_id or world.user_id, activity_id=world.activity_id, state="done",
                           created_at=utcnow(), finished_at=utcnow(), results=results, score_maximum=8,
                           score_given=attempts.score_of(results, 8))
        session.add(row)
        session.commit()
        attempt_id = row.id
    grades.deliver_grade(rt, attempt_id)
    return attempt_id


def sent(rt: Runtime) -> list[tuple[float, str]]:
    return [(p["scoreGiven"], p["activityProgress"]) for p in outbox(rt)]


@pytest.mark.parametrize(("policy", "expected"), [
    # Attempts: the weight-2 check passed (4 points), all passed (8), 2 of 3 (6), all passed (8), none (0).
    ("latest", [(4, "Submitted"), (8, "Completed"), (6, "Submitted"), (8, "Completed"), (0, "Submitted")]),
    ("best", [(4, "Submitted"), (8, "Completed")]),
    ("first_passing", [(4, "Submitted"), (8, "Completed")]),
])
def test_the_gradebook_gets_the_policy_score_when_it_changes(rt: Runtime, graded: World, fake_dir: Path, policy: str, expected: list[tuple[float, str]]) -> None:
    set_activity(rt, graded, grading_policy=policy)
    lab_id = running_lab(rt, graded, fake_dir)
    for passed in ([True, False, False], [True, True, True], [True, True, False], [True, True, True], [False, False, False]):
        done_attempt(rt, graded, lab_id, passed)
    assert sent(rt) == expected
    assert grades.current_score(rt, graded.activity_id, graded.user_id)["score_given"] == expected[-1][0]


def test_first_passing_follows_the_latest_until_one_passes(rt: Runtime, graded: World, fake_dir: Path) -> None:
    set_activity(rt, graded, grading_policy="first_passing")
    lab_id = running_lab(rt, graded, fake_dir)
    for passed in ([True, False, False], [False, False, False], [True, True, False], [True, True, True], [False, True, True]):
        done_attempt(rt, graded, lab_id, passed)
    assert sent(rt) == [(4, "Submitted"), (0, "Submitted"), (6, "Submitted"), (8, "Completed")]


class ScriptedRunner:
    """A grading hook whose outcomes the test decides, by check id; it records what the page could see."""

    outcomes: dict[str, CheckOutcome | Exception] = {}
    seen: list[list[str]] = []

    name = "local"

    def run(self, target: CheckTarget, check: CheckScript) -> CheckOutcome:
        rt = runtime.current()
        with rt.session() as session:  # what the lab page reads while this check runs
            attempt = session.scalars(select(CheckAttempt).order_by(CheckAttempt.id.desc())).first()
            ScriptedRunner.seen.append([r["state"] for r in attempt.results])
        outcome = self.outcomes[check.id]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedRunner]:
    monkeypatch.setattr(grading, "runners", lambda: {"local": ScriptedRunner})
    ScriptedRunner.seen = []
    return ScriptedRunner


def test_each_result_is_committed_as_it_comes(rt: Runtime, graded: World, fake_dir: Path, scripted: type[ScriptedRunner]) -> None:
    scripted.outcomes = {
        "hello-file": CheckOutcome(0, stdout="\n  Found it.  \nmore\n", seconds=0.25),
        "notes": CheckOutcome(None, stdout="", stderr="working\n", timed_out=True, seconds=30.5),
        "tool": CheckOutcome(None, error="connection refused"),
    }
    attempt = run_now(rt, graded, running_lab(rt, graded, fake_dir))
    assert scripted.seen == [["running", "pending", "pending"], ["passed", "running", "pending"], ["passed", "failed", "running"]]
    hello, notes, tool = attempt.results
    assert (hello["feedback"], hello["seconds"]) == ("Found it.", 0.25)
    assert (notes["state"], notes["timed_out"], notes["feedback"]) == ("failed", True, "The check did not finish within 30 seconds.")
    assert notes["hint"] == "Write the word done on a line of its own."
    assert (tool["state"], tool["feedback"], tool["hint"]) == ("error", "The check could not run: connection refused", "")
    assert attempt.score_given == 4


def test_a_hook_that_raises_fails_only_its_check(rt: Runtime, graded: World, fake_dir: Path, scripted: type[ScriptedRunner]) -> None:
    scripted.outcomes = {"hello-file": RuntimeError("bug"), "notes": CheckOutcome(0), "tool": CheckOutcome(1, stderr="a\nb\nc\nd\ne\nf\ng\n")}
    attempt = run_now(rt, graded, running_lab(rt, graded, fake_dir))
    assert [(r["state"], r["feedback"]) for r in attempt.results] == [
        ("error", "The check could not run: the grading hook failed"), ("passed", ""), ("failed", "")]
    assert attempt.results[2]["hint"] == "c\nd\ne\nf\ng"  # the stderr's last lines
    assert (attempt.state, attempt.score_given) == ("done", 2)


def test_a_lab_that_cannot_be_checked_ends_the_attempt_with_its_message(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    with rt.session() as session:
        backend = session.get(Backend, graded.backend_id)
        backend.config = {**backend.config, "fail": {"check_targets": "unsupported"}}
        session.commit()
    attempt = run_now(rt, graded, lab_id)
    assert (attempt.state, attempt.error, attempt.score_given) == ("error", "The lab backend failed (unsupported).", None)
    assert [r["state"] for r in attempt.results] == ["pending"] * 3 and outbox(rt) == []


def test_an_attempt_on_a_lab_that_stopped_meanwhile(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    attempt_id = attempts.start_check(rt, graded.user_id, lab_id)
    with rt.session() as session:
        session.get(Lab, lab_id).state = "suspended"
        session.commit()
    assert attempts.run_attempt(attempt_id) == "error"
    assert attempt_row(rt, attempt_id).error == "The lab is not running any more. Open it and check again."


def test_a_check_on_a_machine_the_lab_does_not_have(rt: Runtime, graded: World, fake_dir: Path, tmp_path: Path) -> None:
    spec = graded_spec(tmp_path)
    spec["checks"][1]["host"] = "router"
    set_spec(rt, graded, spec)
    do_the_work(fake_dir)
    attempt = run_now(rt, graded, running_lab(rt, graded, fake_dir))
    assert [r["state"] for r in attempt.results] == ["passed", "error", "passed"]  # "main" is the fake's one target
    assert attempt.results[1]["feedback"] == 'The check could not run: this lab has no machine "router"'


def test_an_activity_s_grading_settings(rt: Runtime, graded: World) -> None:
    from datetime import timezone

    paris_noon = datetime(2027, 1, 15, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    assert grading_settings.set_grading(rt, graded.activity_id, grading_policy="best", auto_check="at_deadline", due_at=paris_noon) == {
        "grading_policy": "best", "auto_check": "at_deadline", "due_at": datetime(2027, 1, 15, 11, 0), "hide_results_until": None}
    now = grading_settings.set_grading(rt, graded.activity_id, hide_results_until=datetime(2027, 1, 16))
    assert (now["grading_policy"], now["due_at"], now["hide_results_until"]) == ("best", datetime(2027, 1, 15, 11, 0), datetime(2027, 1, 16))
    with pytest.raises(grading_settings.InvalidGrading, match="^grading_policy must be one of latest, best, first_passing; got 'worst'$"):
        grading_settings.set_grading(rt, graded.activity_id, grading_policy="worst")
    with pytest.raises(grading_settings.InvalidGrading, match="^auto_check must be one of none, on_suspend, at_deadline; got 'hourly'$"):
        grading_settings.set_grading(rt, graded.activity_id, auto_check="hourly")
    with pytest.raises(grading_settings.InvalidGrading, match=r"^Checks at the due date need a due date: set one, or choose another automatic check\.$"):
        grading_settings.set_grading(rt, graded.activity_id, due_at=None)
    assert grading_settings.set_grading(rt, graded.activity_id, auto_check="none", due_at=None, hide_results_until=None)["due_at"] is None
    with pytest.raises(NotFound):
        grading_settings.set_grading(rt, 999, grading_policy="latest")


# -- what the pages get ----------------------------------------------------------------------------------
def test_the_view_of_an_attempt(rt: Runtime, graded: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, graded, fake_dir)
    do_the_work(fake_dir, tool=False)
    attempt = run_now(rt, graded, lab_id)
    view = attempt_views.attempt_view(rt, attempt.id, as_instructor=False, user_id=graded.user_id)
    assert {k: view[k] for k in ("id", "lab_id", "state", "finished", "trigger", "score_given", "score_maximum", "passed", "total", "error", "results_hidden_until")} == {
        "id": attempt.id, "lab_id": lab_id, "state": "done", "finished": True, "trigger": "learner", "score_given": 6,
        "score_maximum": 8, "passed": 2, "total": 3, "error": "", "results_hidden_until": None}
    assert view["created_at"].endswith("Z") and datetime.fromisoformat(view["finished_at"][:-1]) >= datetime.fromisoformat(view["created_at"][:-1])
    assert [(c["id"], c["title"], c["state"]) for c in view["checks"]] == [
        ("hello-file", "Create ~/hello.txt", "passed"), ("notes", "Write done in ~/notes.txt", "passed"), ("tool", "Install ~/bin/tool", "failed")]
    assert set(view["checks"][2]) == {"id", "title", "host", "weight", "state", "feedback", "hint", "timed_out", "seconds"}
    assert attempt_views.latest_attempt_id(rt, lab_id) == attempt.id and attempt_views.latest_attempt_id(rt, 999) is None
    with pytest.raises(NotFound):
        attempt_views.attempt_view(rt, attempt.id, as_instructor=False, user_id=add_learner(rt, "nosy"))
    with pytest.raises(NotFound):
        attempt_views.attempt_view(rt, 999, as_instructor=True)


@pytest.fixture
def clock() -> Iterator[list[datetime]]:
    now = [utcnow()]
    set_clock(lambda: now[0])
    yield now
    set_clock(None)


def test_exam_mode_hides_results_from_learners_until_the_time(rt: Runtime, graded: World, fake_dir: Path, clock: list[datetime]) -> None:
    until = clock[0] + timedelta(hours=2)
    set_activity(rt, graded, hide_results_until=until)
    do_the_work(fake_dir, tool=False)
    attempt = run_now(rt, graded, running_lab(rt, graded, fake_dir))

    learner = attempt_views.attempt_view(rt, attempt.id, as_instructor=False)
    assert learner["results_hidden_until"] == until.isoformat(timespec="seconds") + "Z"
    assert (learner["state"], learner["score_given"], learner["score_maximum"], learner["passed"], learner["total"]) == ("done", None, None, None, 3)
    assert learner["checks"] == [{"id": "hello-file", "title": "Create ~/hello.txt", "state": "done"},
                                 {"id": "notes", "title": "Write done in ~/notes.txt", "state": "done"},
                                 {"id": "tool", "title": "Install ~/bin/tool", "state": "done"}]
    assert "failed" not in repr(learner) and "No such file" not in repr(learner) and "feedback" not in repr(learner)

    instructor = attempt_views.attempt_view(rt, attempt.id, as_instructor=True)
    assert (instructor["score_given"], instructor["results_hidden_until"]) == (6, None)
    assert [c["state"] for c in instructor["checks"]] == ["passed", "passed", "failed"]

    with rt.session() as session:  # the LMS gradebook gets the grade only when results are released
        [held] = session.scalars(select(ScoreOutbox)).all()
        assert (held.state, held.next_attempt_at, held.payload["scoreGiven"]) == ("pending", until, 6)

    clock[0] = until + timedelta(seconds=1)
    after = attempt_views.attempt_view(rt, attempt.id, as_instructor=False)
    assert (after["score_given"], after["results_hidden_until"], after["checks"][2]["state"]) == (6, None, "failed")


def test_exam_mode_shows_which_checks_have_run(rt: Runtime, graded: World, fake_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_activity(rt, graded, hide_results_until=utcnow() + timedelta(hours=1))
    views: list[list[str]] = []

    class Peeking(ScriptedRunner):
        def run(self, target: CheckTarget, check: CheckScript) -> CheckOutcome:
            attempt_id = attempt_views.latest_attempt_id(runtime.current(), target_lab[0])
            views.append([c["state"] for c in attempt_views.attempt_view(runtime.current(), attempt_id, as_instructor=False)["checks"]])
            return CheckOutcome(1 if check.id == "notes" else 0)

    target_lab = [running_lab(rt, graded, fake_dir)]
    monkeypatch.setattr(grading, "runners", lambda: {"local": Peeking})
    run_now(rt, graded, target_lab[0])
    assert views == [["running", "pending", "pending"], ["done", "running", "pending"], ["done", "done", "running"]]


def test_the_instructor_sees_every_learners_attempts_and_score(rt: Runtime, graded: World, fake_dir: Path) -> None:
    set_activity(rt, graded, grading_policy="best", hide_results_until=utcnow() + timedelta(days=1))
    first_lab = running_lab(rt, graded, fake_dir)
    ann = add_learner(rt, "Ann")
    ann_lab = running_lab(rt, graded, fake_dir, user_id=ann)
    a1 = done_attempt(rt, graded, first_lab, [True, True, True])
    a2 = done_attempt(rt, graded, first_lab, [True, False, False])
    b1 = done_attempt(rt, graded, ann_lab, [False, True, False], user_id=ann)
    queued = attempts.start_check(rt, ann, ann_lab)

    board = attempt_views.activity_attempts(rt, graded.activity_id)
    assert [(e["name"], [a["id"] for a in e["attempts"]]) for e in board] == [("Ann", [queued, b1]), ("learner-1", [a2, a1])]
    ann_entry, first_entry = board
    assert first_entry["score"] == {"attempt_id": a1, "score_given": 8.0, "score_maximum": 8.0, "all_passed": True, "comment": "3 of 3 checks passed"}
    assert ann_entry["score"]["score_given"] == 2.0 and ann_entry["attempts"][0]["state"] == "queued"
    assert (first_entry["attempts"][0]["passed"], first_entry["attempts"][0]["total"], first_entry["attempts"][0]["score_given"]) == (1, 3, 4.0)
    assert attempt_views.activity_attempts(rt, graded.activity_id)[1]["user_id"] == graded.user_id
    with pytest.raises(NotFound):
        attempt_views.activity_attempts(rt, 999)


# -- automatic checks ------------------------------------------------------------------------------------
def attempts_of(rt: Runtime, lab_id: int) -> list[tuple[str, str]]:
    with rt.session() as session:
        rows = session.scalars(select(CheckAttempt).where(CheckAttempt.lab_id == lab_id).order_by(CheckAttempt.id))
        return [(a.trigger, a.state) for a in rows]


def test_the_deadline_sweep_checks_each_running_lab_once(rt: Runtime, graded: World, fake_dir: Path, clock: list[datetime]) -> None:
    set_activity(rt, graded, auto_check="at_deadline", due_at=clock[0] + timedelta(minutes=10))
    running = running_lab(rt, graded, fake_dir)
    suspended = running_lab(rt, graded, fake_dir, user_id=add_learner(rt, "away"), state="suspended")
    assert attempts.check_due(rt) == 0  # not due yet

    clock[0] += timedelta(minutes=11)
    assert attempts.check_due(rt) == 1
    assert attempts_of(rt, running) == [("deadline", "queued")] and attempts_of(rt, suspended) == []
    assert Queue(QUEUE, connection=rt.redis).count == 1
    assert attempts.check_due(rt) == 0  # one deadline attempt per lab, even while it is queued
    (attempt_id,) = [int(j.split("-")[1]) for j in Queue(QUEUE, connection=rt.redis).job_ids]
    attempts.run_attempt(attempt_id)
    assert attempts.check_due(rt) == 0 and attempts_of(rt, running) == [("deadline", "done")]


def test_the_deadline_sweep_waits_for_an_attempt_under_way(rt: Runtime, graded: World, fake_dir: Path) -> None:
    set_activity(rt, graded, auto_check="at_deadline", due_at=utcnow() - timedelta(minutes=1))
    lab_id = running_lab(rt, graded, fake_dir)
    learners = attempts.start_check(rt, graded.user_id, lab_id)
    attempts.check_due(rt)
    assert attempts_of(rt, lab_id) == [("learner", "queued")]
    attempts.run_attempt(learners)
    assert attempts.check_due(rt) == 1 and attempts_of(rt, lab_id) == [("learner", "done"), ("deadline", "queued")]


def test_activities_without_automatic_checks_are_left_alone(rt: Runtime, graded: World, fake_dir: Path) -> None:
    set_activity(rt, graded, auto_check="none", due_at=utcnow() - timedelta(minutes=1))
    lab_id = running_lab(rt, graded, fake_dir)
    assert attempts.check_due(rt) == 0
    assert attempts.check_before_suspend(rt, lab_id) is None and attempts_of(rt, lab_id) == []


def test_the_deadline_sweep_is_on_the_cron_at_its_interval(rt: Runtime) -> None:
    cron = CronScheduler(connection=rt.redis)
    schedule.register_cron(cron, rt.settings)
    (job,) = [j for j in cron.get_jobs() if j.name == "check_due_job"]
    assert (job.func, job.interval, job.queue_name) == (schedule.check_due_job, 60, DEFAULT_QUEUE)
    assert rt.settings.grading_due_interval == 60


def test_checks_before_suspending_run_once_per_stay_in_running(rt: Runtime, graded: World, fake_dir: Path, clock: list[datetime]) -> None:
    set_activity(rt, graded, auto_check="on_suspend")
    lab_id = running_lab(rt, graded, fake_dir)
    do_the_work(fake_dir)
    first = attempts.check_before_suspend(rt, lab_id)
    assert first is not None and attempts_of(rt, lab_id) == [("suspend", "done")]
    assert attempt_row(rt, first).score_given == 8 and sent(rt) == [(8, "Completed")]
    clock[0] += timedelta(seconds=5)
    assert attempts.check_before_suspend(rt, lab_id) is None  # the suspend job run again: no second check

    clock[0] += timedelta(minutes=5)
    with rt.session() as session:  # resumed: running again
        session.add(LabEvent(lab_id=lab_id, from_state="resuming", to_state="running", reason="test", at=clock[0]))
        session.commit()
    clock[0] += timedelta(minutes=5)
    assert attempts.check_before_suspend(rt, lab_id) is not None
    assert attempts_of(rt, lab_id) == [("suspend", "done"), ("suspend", "done")]


# -- through a real worker (PostgreSQL) ------------------------------------------------------------------
def wait_lab(rt: Runtime, lab_id: int, state: str, timeout: float = 30) -> None:
    def now() -> str:
        with rt.session() as session:
            return session.get(Lab, lab_id).state
    wait_until(lambda: now() == state, timeout=timeout, what=f"lab {lab_id} {state}")


def worker_log(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log")))


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_check_my_work_through_a_real_worker(rt: Runtime, graded: World, fake_dir: Path, workers: WorkerPool, tmp_path: Path) -> None:
    workers.start(queues=(QUEUE,))  # only the backend's queue: the grade's delivery job stays queued to be seen
    lab = services.launch(rt, graded.user_id, graded.activity_id, "learner-1")
    wait_lab(rt, lab.id, "running")
    do_the_work(fake_dir, notes="not yet\n")  # real files the checks look for, in the lab's directory

    attempt_id = attempts.start_check(rt, graded.user_id, lab.id)
    wait_until(lambda: attempt_row(rt, attempt_id).state == "done", timeout=30, what="attempt done")
    attempt = attempt_row(rt, attempt_id)
    assert [r["state"] for r in attempt.results] == ["passed", "failed", "passed"], worker_log(tmp_path)
    assert (attempt.score_given, attempt.score_maximum, attempt.job_id) == (6, 8, f"check-{attempt_id}")
    (payload,) = wait_until(lambda: outbox(rt), timeout=10, what="the score in the outbox")  # right after "done"
    assert {k: v for k, v in payload.items() if k != "timestamp"} == {
        "userId": "learner-1", "scoreGiven": 6.0, "scoreMaximum": 8, "activityProgress": "Submitted",
        "gradingProgress": "FullyGraded", "comment": "2 of 3 checks passed"}
    with rt.session() as session:
        outbox_id = session.scalar(select(ScoreOutbox.id))
    assert Queue(DEFAULT_QUEUE, connection=rt.redis).job_ids == [f"score-{outbox_id}-0"]
    assert f"run_attempt({attempt_id}) (check-{attempt_id})" in worker_log(tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_activity_checked_on_suspend_through_a_real_worker(rt: Runtime, graded: World, fake_dir: Path, workers: WorkerPool, tmp_path: Path) -> None:
    set_activity(rt, graded, auto_check="on_suspend")
    workers.start(queues=(QUEUE,))
    lab = services.launch(rt, graded.user_id, graded.activity_id, "learner-1")
    wait_lab(rt, lab.id, "running")
    do_the_work(fake_dir)

    services.request_state(rt, lab.id, S.SUSPENDING, "sweep", "learner idle")
    wait_lab(rt, lab.id, "suspended")
    with rt.session() as session:
        (attempt,) = session.scalars(select(CheckAttempt)).all()
        suspended_at = session.scalar(select(LabEvent.at).where(LabEvent.lab_id == lab.id, LabEvent.to_state == "suspended"))
    assert (attempt.trigger, attempt.state, attempt.score_given) == ("suspend", "done", 8), worker_log(tmp_path)
    assert attempt.job_id is not None and attempt.job_id.startswith(f"lab-{lab.id}-suspending-")  # inline, in the suspend job
    assert attempt.finished_at <= suspended_at  # checked while the machine still ran, before the suspend
    assert sent(rt) == [(8, "Completed")]
