"""The GPU queue's policy as pure functions: who is next, where a learner stands, how long they wait."""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.gpu_fairness import Order, Waiting, estimate_wait, position, service_order

T0 = datetime(2026, 11, 22, 9, 0)


def waiting(request_id: int, course: int, user: int, minute: int, model: str = "") -> Waiting:
    return Waiting(request_id, lab_id=100 + request_id, course_id=course, user_id=user, model=model,
                   requested_at=T0 + timedelta(minutes=minute))


def ids(order: Order) -> list[int]:
    return [w.request_id for w in order.served]


def test_one_course_is_served_first_come_first_served() -> None:
    queue = [waiting(3, 1, 13, 2), waiting(1, 1, 11, 0), waiting(2, 1, 12, 1)]
    assert ids(service_order(queue, {}, {}, per_learner=1)) == [1, 2, 3]


def test_a_burst_from_one_course_does_not_hold_back_a_small_course() -> None:
    burst = [waiting(n, 1, 10 + n, n) for n in range(1, 7)]  # course 1: six launches at 9:01-9:06
    late = [waiting(20, 2, 40, 10), waiting(21, 2, 41, 11)]  # course 2: two launches at 9:10 and 9:11
    order = ids(service_order(burst + late, {}, {}, per_learner=1))
    # Alternating between the courses while both wait: course 2's first learner is second in line,
    # not seventh as plain first-come-first-served would make them.
    assert order == [1, 20, 2, 21, 3, 4, 5, 6]


def test_a_course_that_already_holds_gpus_waits_behind_one_that_holds_none() -> None:
    queue = [waiting(1, 1, 11, 0), waiting(2, 2, 21, 5)]
    assert ids(service_order(queue, {1: 3}, {}, per_learner=1)) == [2, 1]


def test_a_learner_at_the_limit_is_passed_over_but_keeps_their_request() -> None:
    queue = [waiting(1, 1, 11, 0), waiting(2, 1, 12, 1), waiting(3, 1, 11, 2)]
    order = service_order(queue, {}, {11: 1}, per_learner=1)  # learner 11 already holds a GPU elsewhere
    assert ids(order) == [2]
    assert [w.request_id for w in order.blocked] == [1, 3]
    # With two GPUs each, learner 11's first request is served, the second still waits for the first.
    order = service_order(queue, {}, {}, per_learner=2)
    assert ids(order) == [1, 2, 3]


def test_position_counts_only_requests_competing_for_the_same_gpus() -> None:
    queue = [waiting(1, 1, 11, 0, "nvidia-a100"), waiting(2, 1, 12, 1, "nvidia-t4"), waiting(3, 1, 13, 2, "nvidia-t4"),
             waiting(4, 1, 14, 3, "")]
    order = service_order(queue, {}, {}, per_learner=1)
    assert position(order, 103) == 2  # behind request 2 (t4); the a100 request is no competitor
    assert position(order, 101) == 1
    assert position(order, 104) == 4  # "any GPU" competes with everyone
    assert position(order, 999) is None


def test_the_estimate_follows_the_holders_expected_release() -> None:
    # Two busy units held 20 and 50 minutes, a typical session of 60: they free up in 40 and 10 minutes.
    held = [20 * 60.0, 50 * 60.0]
    assert estimate_wait(1, held, free_units=0, typical_hold=3600) == 10 * 60
    assert estimate_wait(2, held, free_units=0, typical_hold=3600) == 40 * 60
    assert estimate_wait(3, held, free_units=0, typical_hold=3600) == 70 * 60  # after the first, again
    assert estimate_wait(1, held, free_units=1, typical_hold=3600) == 0
    assert estimate_wait(1, [7200.0], free_units=0, typical_hold=3600) == 0  # overdue: any moment now
    assert estimate_wait(1, [], free_units=0, typical_hold=3600) == float("inf")  # no GPU of that kind at all
