"""Trust levels: a learner earns access to scarce labs by passing the checks of the course's other labs.

A learner's trust level for an activity is the number of *other* activities of the same course in which
they have a passing check attempt. An attempt passes when it finished (`state = "done"`) and every one of
its checks passed: the rule `broker.grades` uses for "Completed" and the `first_passing` policy. Any
attempt counts, whoever started it (the learner, an instructor, the automatic checks), and once earned a
level stays: a later failing attempt, or a grading policy that keeps another score, takes nothing away.
In exam mode an attempt counts only once the activity's results are released (`hide_results_until` has
passed), or the trust level would tell the learner their hidden result.

An activity with `min_trust_level = N` refuses a launch below N (`broker.launch_gate`); the refusal names
the labs whose checks would raise the learner's level: the course's other activities that have checks,
that the learner has not passed yet and could open now. Instructors are never refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.models import Activity, CheckAttempt


@dataclass(frozen=True)
class TrustShortfall:
    """A learner below an activity's trust level, and what would unlock it."""

    required: int
    level: int
    unlockers: list[str]  # titles of the activities whose checks would raise the level, in course order
    gpu: bool  # the activity's image asks for a GPU (the message says why it is guarded)

    def message(self) -> str:
        why = "uses scarce GPUs and opens" if self.gpu else "opens"
        opening = f"This lab {why} at trust level {self.required}. You have {self.level}"
        need = self.required - self.level
        if not self.unlockers:
            return f"{opening}, and no other lab of this course can raise it yet. Please ask your instructor."
        names = _either(self.unlockers)
        if len(self.unlockers) < need:
            return (f"{opening}: pass the checks of {_all(self.unlockers)}, "
                    "and ask your instructor about the rest: this course has no other lab that can raise it yet.")
        if need == 1:
            return f"{opening}: pass the checks of {names} to unlock it."
        if len(self.unlockers) == need:
            return f"{opening}: pass the checks of {_all(self.unlockers)} to unlock it."
        return f"{opening}: pass the checks of {need} of {names} to unlock it."


def passed_activities(session: Session, user_id: int, course_id: int) -> set[int]:
    """The activities of the course in which the learner has a passing attempt whose results they may see."""
    from broker import grades  # broker.grades imports broker.services, which imports the launch gate (and this)

    now = utcnow()
    attempts = session.scalars(
        select(CheckAttempt)
        .join(Activity, CheckAttempt.activity_id == Activity.id)
        .where(
            CheckAttempt.user_id == user_id,
            Activity.course_id == course_id,
            CheckAttempt.state == "done",
            or_(Activity.hide_results_until.is_(None), Activity.hide_results_until <= now),
        )
    )
    return {attempt.activity_id for attempt in attempts if grades.scored(attempt).all_passed}


def level(session: Session, user_id: int, activity: Activity) -> int:
    """The learner's trust level for `activity`: other activities of its course they have passed."""
    return len(passed_activities(session, user_id, activity.course_id) - {activity.id})


def shortfall(session: Session, user_id: int, activity: Activity) -> TrustShortfall | None:
    """Why the learner may not open `activity` yet, or None when their level is enough."""
    if activity.min_trust_level <= 0:
        return None
    passed = passed_activities(session, user_id, activity.course_id)
    have = len(passed - {activity.id})
    if have >= activity.min_trust_level:
        return None
    others = session.scalars(
        select(Activity).where(Activity.course_id == activity.course_id, Activity.id != activity.id).order_by(Activity.id)
    ).all()
    # Passing X would not count X itself, so the learner's level for X is len(passed): X must open at it.
    unlockers = [
        other.title for other in others
        if other.id not in passed and other.min_trust_level <= len(passed) and _has_checks(other)
    ]
    return TrustShortfall(activity.min_trust_level, have, unlockers, _wants_gpu(activity))


def _has_checks(activity: Activity) -> bool:
    checks = (activity.image.spec or {}).get("checks")
    return isinstance(checks, list) and bool(checks)


def _wants_gpu(activity: Activity) -> bool:
    resources = (activity.image.spec or {}).get("resources") or {}
    return bool(resources.get("gpu")) if isinstance(resources, dict) else False


def _quoted(titles: list[str]) -> list[str]:
    return [f"'{title}'" for title in titles]


def _either(titles: list[str]) -> str:
    """'A', 'A' or 'B', 'A', 'B' or 'C'."""
    quoted = _quoted(titles)
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _all(titles: list[str]) -> str:
    """'A', 'A' and 'B', 'A', 'B' and 'C'."""
    quoted = _quoted(titles)
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
