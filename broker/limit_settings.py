"""An activity's limits, as an instructor sets them: running hours per learner per week and the minimum
trust level (docs/limits.md), read from what was typed, validated with messages an instructor can act on,
and audited as the instructor."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit
from broker.errors import LabDeskError
from broker.models import Activity, Image
from broker.runtime import Runtime
from broker.services import NotFound

HOURS_IN_A_WEEK = 168
MAX_TRUST_LEVEL = 100


class InvalidLimits(LabDeskError, ValueError):
    """A limit cannot be stored as typed; the message names the field and the reason."""


@dataclass(frozen=True)
class Limits:
    weekly_hours_limit: float | None
    min_trust_level: int
    warning: str = ""  # saved, but worth knowing (a trust level nobody can reach in the course yet)


def parse_hours(typed: str) -> float | None:
    """Hours per week as typed ("5", "2.5", "2,5"); empty is no limit."""
    text = typed.strip()
    if not text:
        return None
    try:
        hours = float(text.replace(",", "."))
    except ValueError:
        raise InvalidLimits(f"Hours per week must be a number such as 5 or 2.5 (or empty for no limit); got '{text}'.") from None
    if not math.isfinite(hours):
        raise InvalidLimits(f"Hours per week must be a number such as 5 or 2.5 (or empty for no limit); got '{text}'.")
    if hours < 0:
        raise InvalidLimits(f"Hours per week cannot be negative; got {text}. Leave it empty for no limit.")
    if hours == 0:
        raise InvalidLimits("Hours per week must be more than 0: 0 would keep every learner out. Leave it empty for no limit.")
    if hours > HOURS_IN_A_WEEK:
        raise InvalidLimits(f"Hours per week can be at most {HOURS_IN_A_WEEK} (a whole week); got {text}. Leave it empty for no limit.")
    return hours


def parse_trust_level(typed: str) -> int:
    """The minimum trust level as typed; empty is 0 (every learner)."""
    text = typed.strip()
    if not text:
        return 0
    try:
        level = int(text)
    except ValueError:
        raise InvalidLimits(f"The minimum trust level must be a whole number such as 0, 1 or 2; got '{text}'.") from None
    if level < 0:
        raise InvalidLimits(f"The minimum trust level cannot be negative; got {text}. 0 lets every learner in.")
    if level > MAX_TRUST_LEVEL:
        raise InvalidLimits(f"The minimum trust level can be at most {MAX_TRUST_LEVEL}; got {text}.")
    return level


def set_limits(rt: Runtime, activity_id: int, hours_typed: str, trust_typed: str, actor: str, address: str = "") -> Limits:
    """Store the activity's limits from what the instructor typed, with an audit row; raises InvalidLimits
    (nothing is changed) or NotFound. The limits apply from the next launch and the next usage sweep."""
    hours, level = parse_hours(hours_typed), parse_trust_level(trust_typed)
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise NotFound(f"no activity {activity_id}")
        before = describe(activity.weekly_hours_limit, activity.min_trust_level)
        activity.weekly_hours_limit, activity.min_trust_level = hours, level
        audit.record(session, actor, "activity.limits", target=f"activity:{activity_id}",
                     detail=f"{activity.title}: {before} -> {describe(hours, level)}", address=address)
        warning = unreachable_warning(session, activity)
        session.commit()
        return Limits(hours, level, warning)


def describe(hours: float | None, level: int) -> str:
    return f"hours per week {'none' if hours is None else f'{hours:g}'}, minimum trust level {level}"


def unreachable_warning(session: Session, activity: Activity) -> str:
    """A warning when the course has fewer other activities with checks than the level asks for."""
    if activity.min_trust_level == 0:
        return ""
    specs = session.scalars(
        select(Image.spec).join(Activity, Activity.image_id == Image.id)
        .where(Activity.course_id == activity.course_id, Activity.id != activity.id)
    ).all()
    graded = sum(1 for spec in specs if isinstance((spec or {}).get("checks"), list) and spec["checks"])
    if graded >= activity.min_trust_level:
        return ""
    labs = f"{graded} other activit{'y' if graded == 1 else 'ies'} with checks"
    return (f"This course has {labs} so far, so no learner can reach trust level {activity.min_trust_level} "
            "yet: they can once you add more graded labs to the course.")
