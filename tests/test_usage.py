"""broker.usage on hand-built event histories, whose expected hours are worked out by hand in each test.

The histories straddle the period's start and end, cross bucket edges, carry a same-state recovery event,
and include labs wholly before and after the period. SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterator

import pytest

from broker import usage
from broker.clock import set_clock
from broker.models import Activity, Backend, Course, Image, Lab, LabEvent, User
from broker.runtime import Runtime

T = datetime
START, END = T(2026, 11, 1), T(2026, 11, 3)
H = 3600.0


@pytest.fixture
def clock() -> Iterator[list[datetime]]:
    """Now is after the period unless a test moves it."""
    now = [T(2026, 11, 5)]
    set_clock(lambda: now[0])
    yield now
    set_clock(None)


def setup(rt: Runtime) -> dict[str, int]:
    with rt.session() as session:
        priced = Backend(name="priced", kind="fake", config={}, hourly_price=2.0, suspended_hourly_price=0.5)
        unpriced = Backend(name="unpriced", kind="fake", config={})
        image = Image(slug="img", title="Image")
        c1 = Course(issuer="t", context_id="c1", title="Networks")
        c2 = Course(issuer="t", context_id="c2", title="Databases")
        session.add_all([priced, unpriced, image, c1, c2])
        session.flush()
        a1 = Activity(course_id=c1.id, resource_link_id="l1", title="Lab 1", image_id=image.id, backend_id=priced.id)
        a2 = Activity(course_id=c2.id, resource_link_id="l2", title="Lab 2", image_id=image.id, backend_id=unpriced.id)
        session.add_all([a1, a2])
        session.commit()
        return {"priced": priced.id, "unpriced": unpriced.id, "c1": c1.id, "c2": c2.id, "a1": a1.id, "a2": a2.id}


def lab(rt: Runtime, activity_id: int, backend_id: int, history: list[tuple[str, datetime]]) -> int:
    """A lab whose events enter each state of `history` at its time (the first from nowhere)."""
    with rt.session() as session:
        user = User(issuer="t", subject=f"u{history[0][1].isoformat()}-{len(history)}-{activity_id}")
        session.add(user)
        session.flush()
        row = Lab(
            user_id=user.id, activity_id=activity_id, backend_id=backend_id, state=history[-1][0],
            state_changed_at=history[-1][1], created_at=history[0][1], last_active_at=history[-1][1],
        )
        session.add(row)
        session.flush()
        previous = ""
        for state, at in history:
            session.add(LabEvent(lab_id=row.id, from_state=previous, to_state=state, at=at))
            previous = state
        session.commit()
        return row.id


def build(rt: Runtime) -> dict[str, int]:
    ids = setup(rt)
    # A: course 1, priced. Runs across the period's start, is suspended, resumes, is deleted inside it.
    #   running [Nov 1 00:00, 02:00) = 2 h  and  [Nov 1 10:02, Nov 2 12:00) = 25 h 58 min
    #   suspended [Nov 1 02:01, 10:00) = 7 h 59 min
    lab(rt, ids["a1"], ids["priced"], [
        ("requested", T(2026, 10, 31, 22, 0)), ("provisioning", T(2026, 10, 31, 22, 1)),
        ("running", T(2026, 10, 31, 22, 5)), ("suspending", T(2026, 11, 1, 2, 0)),
        ("suspended", T(2026, 11, 1, 2, 1)), ("resuming", T(2026, 11, 1, 10, 0)),
        ("running", T(2026, 11, 1, 10, 2)), ("deleting", T(2026, 11, 2, 12, 0)), ("deleted", T(2026, 11, 2, 12, 1)),
    ])
    # C: course 1, priced. A recovery event (suspending -> suspending) changes nothing; it then fails.
    #   running [Nov 1 08:00, 09:00) = 1 h;  suspended [09:20, 11:20) = 2 h
    lab(rt, ids["a1"], ids["priced"], [
        ("running", T(2026, 11, 1, 8, 0)), ("suspending", T(2026, 11, 1, 9, 0)),
        ("suspending", T(2026, 11, 1, 9, 10)), ("suspended", T(2026, 11, 1, 9, 20)), ("failed", T(2026, 11, 1, 11, 20)),
    ])
    # B: course 2, unpriced. Still running after the period's end: [Nov 2 23:30, Nov 3 00:00) = 0.5 h
    lab(rt, ids["a2"], ids["unpriced"], [("running", T(2026, 11, 2, 23, 30))])
    # D: wholly before the period; E: wholly after it. Neither counts.
    lab(rt, ids["a1"], ids["priced"], [("running", T(2026, 10, 30)), ("deleting", T(2026, 10, 31)), ("deleted", T(2026, 10, 31, 0, 1))])
    lab(rt, ids["a1"], ids["priced"], [("running", T(2026, 11, 3, 1, 0))])
    return ids


A_RUNNING = 2 + 25 + 58 / 60
A_SUSPENDED = 7 + 59 / 60


def test_hours_and_costs_per_course_and_backend(rt: Runtime, clock: list[datetime]) -> None:
    ids = build(rt)
    with rt.session() as session:
        report = usage.report(session, START, END)
    by_course = {r.key: r for r in report.by_course}
    networks, databases = by_course[ids["c1"]], by_course[ids["c2"]]
    assert networks.name == "Networks"
    assert networks.running_hours == pytest.approx(A_RUNNING + 1)
    assert networks.suspended_hours == pytest.approx(A_SUSPENDED + 2)
    assert networks.running_cost == pytest.approx((A_RUNNING + 1) * 2.0)
    assert networks.suspended_cost == pytest.approx((A_SUSPENDED + 2) * 0.5)
    assert networks.cost == pytest.approx((A_RUNNING + 1) * 2.0 + (A_SUSPENDED + 2) * 0.5)
    # No price set: the cost is unknown, not zero; no suspended hours cost nothing whatever the price.
    assert databases.running_hours == pytest.approx(0.5) and databases.suspended_hours == 0
    assert databases.running_cost is None and databases.suspended_cost == 0 and databases.cost is None
    by_backend = {r.name: r for r in report.by_backend}
    assert by_backend["priced"].running_hours == pytest.approx(A_RUNNING + 1)
    assert by_backend["unpriced"].cost is None
    assert report.running_hours == pytest.approx(A_RUNNING + 1.5)
    assert report.suspended_hours == pytest.approx(A_SUSPENDED + 2)
    assert report.cost is None  # one of its parts has no price

    with rt.session() as session:
        session.get(Backend, ids["unpriced"]).hourly_price = 3.0
        session.commit()
        report = usage.report(session, START, END)
    assert report.cost == pytest.approx((A_RUNNING + 1) * 2.0 + (A_SUSPENDED + 2) * 0.5 + 0.5 * 3.0)


def test_daily_series_splits_at_midnight(rt: Runtime, clock: list[datetime]) -> None:
    build(rt)
    with rt.session() as session:
        points = usage.series(session, START, END, "day")
    assert [p.start for p in points] == [T(2026, 11, 1), T(2026, 11, 2)]
    # Nov 1: A runs 00:00-02:00 and 10:02-24:00 (13 h 58 min), C runs 1 h; A sleeps 7 h 59 min, C 2 h.
    assert points[0].running_hours == pytest.approx(2 + 13 + 58 / 60 + 1)
    assert points[0].suspended_hours == pytest.approx(A_SUSPENDED + 2)
    # Nov 2: A runs 00:00-12:00, B 23:30-24:00.
    assert points[1].running_hours == pytest.approx(12.5)
    assert points[1].suspended_hours == 0
    assert sum(p.running_hours for p in points) == pytest.approx(A_RUNNING + 1.5)


def test_hourly_series_clips_a_period_that_starts_mid_hour(rt: Runtime, clock: list[datetime]) -> None:
    build(rt)
    with rt.session() as session:
        points = usage.series(session, T(2026, 11, 1, 0, 30), T(2026, 11, 1, 3, 0), "hour")
    # The first bucket is 00:00-01:00 but only its half inside the period counts; A suspends at 02:00
    # sharp (a bucket edge) and is suspended from 02:01.
    assert [(p.start.hour, round(p.running_hours * 60), round(p.suspended_hours * 60)) for p in points] == [
        (0, 30, 0), (1, 60, 0), (2, 0, 59),
    ]


def test_a_lab_still_running_counts_up_to_now(rt: Runtime, clock: list[datetime]) -> None:
    ids = setup(rt)
    lab(rt, ids["a1"], ids["priced"], [("running", T(2026, 11, 1, 6, 0))])
    clock[0] = T(2026, 11, 1, 9, 30)
    with rt.session() as session:
        report = usage.report(session, START, END)
        points = usage.series(session, START, END, "hour")
    assert report.running_hours == pytest.approx(3.5)
    assert report.cost == pytest.approx(7.0)
    assert sum(p.running_hours for p in points) == pytest.approx(3.5)
    assert points[9].running_hours == pytest.approx(0.5) and points[10].running_hours == 0


def test_a_period_with_nothing_in_it(rt: Runtime, clock: list[datetime]) -> None:
    build(rt)
    with rt.session() as session:
        report = usage.report(session, T(2026, 9, 1), T(2026, 9, 2))
        assert usage.series(session, T(2026, 11, 6), T(2026, 11, 7)) == [  # after now: nothing yet
            usage.SeriesPoint(T(2026, 11, 6), 0.0, 0.0)
        ]
    assert report.by_course == [] and report.by_backend == [] and report.cost == 0
