"""bench/gpu_queue.py run small (40 requests over 3 devices): every request served, no unit ever held twice,
and figures that add up. No timing is asserted."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from bench import gpu_queue
from bench.gpu_queue import DoubleAssignment, Ledger, RunResult
from broker.gpu_fairness import Waiting
from tests.support.services import require_postgres

SMALL = ["--requests", "40", "--devices", "3", "--courses", "4", "--seed", "3"]


def run_small(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
              ) -> tuple[dict[str, RunResult], str]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the SQLite file goes into the test's own directory
    results = gpu_queue.main([*SMALL, "--database", database])
    return results, capsys.readouterr().out


def check_sane(results: dict[str, RunResult], out: str) -> None:
    assert set(results) == {"fair", "fcfs"}
    for policy, result in results.items():
        arrivals = result.arrivals
        assert len(arrivals) == 40 and result.grants == 40 and len(result.waits) == 40  # every request served
        assert result.double_assignments == 0
        assert result.dispatch_calls == result.checks == 80  # one dispatch per arrival and per release, each checked
        assert all(wait >= 0 for wait in result.waits.values())
        assert sum(len(waits) for waits in result.course_waits().values()) == 40
        assert 20 <= result.learners < 40 and len({a.learner for a in arrivals}) == result.learners
        assert result.last_release >= max(a.at for a in arrivals)
        assert result.ratio(max) >= 1
        assert f"{policy}_double_assignments: 0 (checked after each of 80 dispatches)" in out
    assert results["fair"].arrivals == results["fcfs"].arrivals  # both policies see the same day
    assert "requests: 40\ndevices: 3\ncourses: 4\n" in out
    assert [line.split()[-2:] for line in out.splitlines() if line.strip().startswith("double assignments")] == [["0", "0"]]


def test_small_run_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    results, out = run_small("sqlite", tmp_path, monkeypatch, capsys)
    check_sane(results, out)
    assert list(tmp_path.iterdir()) == []  # the bench removed its directory


@pytest.mark.postgres
def test_small_run_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    results, out = run_small("postgres", tmp_path, monkeypatch, capsys)
    check_sane(results, out)


def test_the_ledger_catches_a_unit_given_twice() -> None:
    ledger = Ledger(per_learner=1)
    ledger.grant(1, "gpu0/a", learner=10)
    with pytest.raises(DoubleAssignment, match="while lab 1 holds it"):
        ledger.grant(2, "gpu0/a", learner=11)
    with pytest.raises(DoubleAssignment, match="beyond the limit"):
        ledger.grant(3, "gpu0/b", learner=10)
    with pytest.raises(DoubleAssignment, match="units with two holders"):
        ledger.check([("gpu0/a", 1)], [("gpu0/a", 1), ("gpu0/a", 2)])
    with pytest.raises(DoubleAssignment, match="holders disagree"):
        ledger.check([("gpu0/a", 2)], [("gpu0/a", 2)])
    ledger.check([("gpu0/a", 1)], [("gpu0/a", 1)])


def test_the_baseline_serves_in_arrival_order_whatever_the_course() -> None:
    at = [datetime(2026, 3, 2, 8, minute) for minute in range(3)]
    waiting = [Waiting(1, 1, course_id=7, user_id=1, model="", requested_at=at[0]),
               Waiting(2, 2, course_id=7, user_id=2, model="", requested_at=at[1]),
               Waiting(3, 3, course_id=8, user_id=3, model="", requested_at=at[2])]
    held = {7: 2}  # course 7 holds two GPUs already: the fair share would serve course 8 first
    assert [w.lab_id for w in gpu_queue.first_come_first_served(waiting, held, {}, 1).served] == [1, 2, 3]
    assert [w.lab_id for w in gpu_queue.gpu_fairness.service_order(waiting, held, {}, 1).served][0] == 3
