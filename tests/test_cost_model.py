"""The economics a learner and an institution see, from a small run of the cost simulation (bench/).

The simulation drives the real launch, keepalive/leave, suspend sweep and job code on a simulated clock
(see bench/simulation.py); this is its small, fast form: 20 learners, 3 lessons each.
"""

from __future__ import annotations

import pytest

from bench.simulation import Result, SimConfig, simulate
from tests.support.services import REDIS_URL, require_redis

SMALL = SimConfig(learners=20, lessons=3, section_size=10, types="AB", redis_url=REDIS_URL, seed=7)


@pytest.fixture(scope="module")
def month() -> Result:
    require_redis()
    return simulate(SMALL)


def test_closing_the_tab_suspends_the_lab_within_the_grace_and_one_sweep(month: Result) -> None:
    delays = month.to_suspending["A"]
    assert len(delays) == SMALL.learners // 2 * SMALL.lessons
    assert max(delays) <= SMALL.leave_grace + SMALL.sweep_interval
    assert max(month.to_suspended["A"]) <= SMALL.leave_grace + SMALL.sweep_interval + SMALL.suspend_delay + 2 * SMALL.poll_interval


def test_labs_bill_little_more_than_the_learners_use(month: Result) -> None:
    assert month.ratio("A") < 1.1
    assert month.ratio("B") < 1.3
    assert month.failed_labs == 0


def test_a_lab_whose_page_sends_keepalives_is_never_suspended_mid_lesson() -> None:
    require_redis()
    tight = simulate(SimConfig(learners=10, lessons=2, section_size=10, types="B", idle_suspend_after=60,
                               redis_url=REDIS_URL, seed=3))
    assert tight.mid_lesson_suspensions == 0
    # and once the page gives up (after its input-idle limit) the lab does go down
    assert len(tight.to_suspending["B"]) == 10 * 2
