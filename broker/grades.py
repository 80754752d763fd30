"""A learner's grade for an activity: the grading policy over their finished check attempts, and the
score it sends to the LMS through the grade outbox whenever it changes.

Policies: `latest` (the newest attempt), `best` (the highest), `first_passing` (the first attempt that
passes every check, after which nothing changes the grade; until then the newest). In exam mode the
score waits in the outbox until results are released (`Activity.hide_results_until`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.models import Activity, CheckAttempt
from broker.runtime import Runtime
from broker.scores import record_score
from broker.services import NotFound

POLICIES = ("latest", "best", "first_passing")


@dataclass(frozen=True)
class Scored:
    """A finished attempt as the grading policy sees it."""

    id: int
    given: float
    maximum: float
    passed: int
    total: int

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


def scored(attempt: CheckAttempt) -> Scored:
    results = attempt.results or []
    passed = sum(1 for r in results if r.get("state") == "passed")
    return Scored(attempt.id, float(attempt.score_given or 0), float(attempt.score_maximum or 0), passed, len(results))


def policy_choice(policy: str, history: Sequence[Scored]) -> Scored | None:
    """The attempt whose score counts, among finished attempts oldest first.

    latest: the newest. best: the highest share of its maximum (the newest of equals). first_passing:
    the first with every check passed, once there is one; until then the newest.
    """
    if not history:
        return None
    if policy == "best":
        best = history[0]
        for item in history[1:]:
            if _ratio(item) >= _ratio(best):
                best = item
        return best
    if policy == "first_passing":
        return next((item for item in history if item.all_passed), history[-1])
    return history[-1]


def _ratio(item: Scored) -> float:
    return item.given / item.maximum if item.maximum else 0.0


def deliver_grade(rt: Runtime, attempt_id: int) -> int | None:
    """Send the learner's activity score to the LMS when this attempt changed it (the first always does);
    returns the outbox id, or None when nothing was sent."""
    with rt.session() as session:
        attempt = session.get(CheckAttempt, attempt_id)
        if attempt is None or attempt.state != "done":
            return None
        policy = attempt.activity.grading_policy
        history = [scored(a) for a in _done_attempts(session, attempt.activity_id, attempt.user_id)]
        ids = [item.id for item in history]
        if attempt_id not in ids:
            return None
        before = history[: ids.index(attempt_id)]
        now = policy_choice(policy, history[: ids.index(attempt_id) + 1])
        then = policy_choice(policy, before)
        assert now is not None
        if then is not None and _grade(then) == _grade(now):
            return None
        activity_id, user_id = attempt.activity_id, attempt.user_id
        held = attempt.activity.hide_results_until  # exam mode: the LMS gets it when results are released
    return record_score(
        rt, activity_id, user_id, now.given, now.maximum,
        "Completed" if now.all_passed else "Submitted", "FullyGraded", _comment(now),
        not_before=held if held and held > utcnow() else None,
    )


def _grade(item: Scored) -> tuple[float, float, bool]:
    return (item.given, item.maximum, item.all_passed)


def _comment(item: Scored) -> str:
    return f"{item.passed} of {item.total} check{'' if item.total == 1 else 's'} passed"


def _done_attempts(session: Session, activity_id: int, user_id: int) -> list[CheckAttempt]:
    return list(session.scalars(
        select(CheckAttempt)
        .where(CheckAttempt.activity_id == activity_id, CheckAttempt.user_id == user_id, CheckAttempt.state == "done")
        .order_by(CheckAttempt.created_at, CheckAttempt.id)
    ))


def current_score(rt: Runtime, activity_id: int, user_id: int) -> dict[str, Any] | None:
    """The learner's score for the activity under its policy: attempt id, given, maximum, comment."""
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise NotFound(f"no activity {activity_id}")
        chosen = policy_choice(activity.grading_policy, [scored(a) for a in _done_attempts(session, activity_id, user_id)])
        return score_dict(chosen)


def score_dict(chosen: Scored | None) -> dict[str, Any] | None:
    if chosen is None:
        return None
    return {"attempt_id": chosen.id, "score_given": chosen.given, "score_maximum": chosen.maximum,
            "all_passed": chosen.all_passed, "comment": _comment(chosen)}
