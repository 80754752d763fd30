"""Weekly hour limits: the running lab-hours one learner may use on one activity per week.

An instructor sets `Activity.weekly_hours_limit` (None: no limit). A week starts on Monday at 00:00 UTC,
the same moment for every learner wherever they are, so "it opens again on Monday at 00:00 UTC" is one
sentence that is true for all of them. Hours are counted as `broker.usage` counts lab-hours, from the
lab event history: only *running* time counts (a suspended lab costs the learner nothing), over every
lab the learner had of the activity this week, so a reset or a relaunch does not start the count again.

Three places use it: the launch gate refuses to create or resume a lab once the week's hours are used
(`check`), a periodic sweep suspends running labs that went over (`sweep`; their work is kept), and the
lab page shows the hours left (`status`). Instructors of the course have no limit (`broker.launch_gate`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session, aliased

from broker import usage
from broker.clock import utcnow
from broker.connector import Capability
from broker.jobs import job_request
from broker.lifecycle import LabState, Move, transition_many
from broker.models import Activity, Backend, Lab, LabEvent, Membership
from broker.registry import connector_class
from broker.runtime import Runtime

S = LabState
WEEK = timedelta(days=7)
SWEEP_REASON = "weekly hour limit reached"


@dataclass(frozen=True)
class WeeklyUsage:
    """One learner's running hours on one limited activity in the week that holds `now`."""

    limit: float
    used: float
    week_start: datetime

    @property
    def reopens_at(self) -> datetime:
        return self.week_start + WEEK

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def refusal(self) -> str:
        """What a learner reads when the lab is refused or suspended for the rest of the week."""
        return (f"You have used your {hours_text(self.limit)} of this lab for this week. "
                f"It opens again on {day_text(self.reopens_at)} at 00:00 UTC.")

    def text(self) -> str:
        """The lab page's line: the hours left this week, or the refusal once there are none."""
        if self.exhausted:
            return self.refusal()
        return (f"This week you have {duration_text(self.remaining)} left of this lab's {hours_text(self.limit)}; "
                f"the count starts again on {day_text(self.reopens_at)} at 00:00 UTC.")

    def as_json(self) -> dict[str, Any]:
        return {"limit_hours": self.limit, "used_hours": round(self.used, 4), "remaining_hours": round(self.remaining, 4),
                "reopens_at": self.reopens_at.isoformat() + "Z", "exhausted": self.exhausted, "text": self.text()}


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the week that holds `moment` (naive UTC)."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def weekly_usage(session: Session, user_id: int, activity: Activity, now: datetime | None = None) -> WeeklyUsage | None:
    """The learner's use of `activity` this week, or None when the activity has no limit."""
    if activity.weekly_hours_limit is None:
        return None
    now = now or utcnow()
    start = week_start(now)
    used = running_hours(session, start, now, and_(Lab.user_id == user_id, Lab.activity_id == activity.id))
    return WeeklyUsage(activity.weekly_hours_limit, used.get((user_id, activity.id), 0.0), start)


def running_hours(session: Session, start: datetime, stop: datetime, labs: ColumnElement[bool]) -> dict[tuple[int, int], float]:
    """Running hours in [start, stop) per (learner, activity), over the labs `labs` selects, counted by
    `broker.usage`'s walk over the lab events (one query)."""
    rows = session.execute(
        select(LabEvent.lab_id, LabEvent.to_state, LabEvent.at, Activity.course_id, Lab.backend_id, Lab.user_id, Lab.activity_id)
        .join(Lab, LabEvent.lab_id == Lab.id)
        .join(Activity, Lab.activity_id == Activity.id)
        .where(labs, or_(Lab.state_changed_at >= start, Lab.state.in_(usage.COUNTED)), LabEvent.at < stop)
        .order_by(LabEvent.lab_id, LabEvent.at, LabEvent.id)
    ).all()
    owner = {row.lab_id: (row.user_id, row.activity_id) for row in rows}
    events = [(row.lab_id, row.to_state, row.at, row.course_id, row.backend_id) for row in rows]
    totals: dict[tuple[int, int], float] = defaultdict(float)
    for interval in usage.walk_events(events, start, stop):  # the same walk as the admin's usage report
        if interval.state == S.RUNNING.value:
            totals[owner[interval.lab_id]] += interval.hours
    return dict(totals)


class LimitReached(Exception):
    """Raised by `check`; `broker.launch_gate` turns it into the learner's refusal."""

    def __init__(self, used: WeeklyUsage) -> None:
        super().__init__(used.refusal())
        self.usage = used


def check(session: Session, user_id: int, activity: Activity) -> None:
    """Before a launch or a resume: raise LimitReached when the learner has used the week's hours."""
    used = weekly_usage(session, user_id, activity)
    if used is not None and used.exhausted:
        raise LimitReached(used)


def status(session: Session, lab: Lab) -> WeeklyUsage | None:
    """What the lab page shows its learner: None when no limit applies to them (none set, or they teach)."""
    if lab.activity.weekly_hours_limit is None or teaches(session, lab.activity.course_id, lab.user_id):
        return None
    return weekly_usage(session, lab.user_id, lab.activity)


def sweep(rt: Runtime) -> int:
    """Suspend every running lab whose learner has used their week's hours on its activity; the suspend
    keeps their work, and the lab's message says why. Returns how many labs it suspended.

    Labs on a backend that cannot suspend are left running (deleting them would lose the learner's work);
    the launch gate still refuses them a new start. Instructors' own labs are never suspended by it."""
    now = utcnow()
    start = week_start(now)
    with rt.session() as session:
        live = aliased(Lab)
        has_running_limited_lab = exists().where(
            live.user_id == Lab.user_id, live.activity_id == Lab.activity_id, live.state == S.RUNNING.value
        )
        used = running_hours(session, start, now, and_(Activity.weekly_hours_limit.is_not(None), has_running_limited_lab))
        running = session.execute(
            select(Lab.id, Lab.user_id, Lab.activity_id, Lab.backend_id, Activity.course_id, Activity.weekly_hours_limit)
            .join(Activity, Lab.activity_id == Activity.id)
            .where(Lab.state == S.RUNNING.value, Activity.weekly_hours_limit.is_not(None))
            .order_by(Lab.id)
            .limit(rt.settings.sweep_batch)
        ).all()
        suspendable = _suspendable(session)
        over: dict[str, list[int]] = defaultdict(list)
        for row in running:
            spent = WeeklyUsage(row.weekly_hours_limit, used.get((row.user_id, row.activity_id), 0.0), start)
            if spent.exhausted and row.backend_id in suspendable and not teaches(session, row.course_id, row.user_id):
                over[spent.refusal()].append(row.id)
        moved: list[int] = []
        for message, lab_ids in over.items():  # one message per limit: the lab page reads it while it suspends
            moved += transition_many(session, rt.settings, lab_ids, S.RUNNING, S.SUSPENDING, Move(SWEEP_REASON, "sweep"), message=message)
        if moved:
            labs = session.scalars(select(Lab).where(Lab.id.in_(moved)).execution_options(populate_existing=True)).all()
            rt.dispatcher.enqueue_many([job_request(lab, lab.backend.queue_name) for lab in labs])
        return len(moved)


def teaches(session: Session, course_id: int, user_id: int) -> bool:
    """Whether the LMS last said this user teaches the course: no limit applies to them."""
    role = session.scalar(select(Membership.role).where(Membership.course_id == course_id, Membership.user_id == user_id))
    return role == "instructor"


def _suspendable(session: Session) -> set[int]:
    backends = session.execute(select(Backend.id, Backend.kind)).all()
    return {backend_id for backend_id, kind in backends if Capability.SUSPEND in connector_class(kind).capabilities}


# -- words ------------------------------------------------------------------------------------------------
def hours_text(hours: float) -> str:
    """5 -> "5 hours", 1 -> "1 hour", 1.5 -> "1.5 hours"."""
    return f"{hours:g} hour{'' if hours == 1 else 's'}"


def duration_text(hours: float) -> str:
    """A time left, to the nearest minute: "4 hours 35 minutes", "1 hour", "12 minutes"."""
    minutes = max(0, math.floor(hours * 60 + 0.5))
    whole, rest = divmod(minutes, 60)
    parts = [f"{whole} hour{'' if whole == 1 else 's'}"] if whole else []
    if rest or not whole:
        parts.append(f"{rest} minute{'' if rest == 1 else 's'}")
    return " ".join(parts)


def day_text(moment: datetime) -> str:
    """"Monday 7 December" (English, as every page of LabDesk)."""
    return f"{moment:%A} {moment.day} {moment:%B}"
