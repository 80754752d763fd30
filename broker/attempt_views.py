"""Check attempts as the pages show them: the lab page polls one attempt, the instructor view lists an
activity's learners with their attempts and current grade. Exam mode hides results from learners here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from broker.clock import utcnow
from broker.grades import Scored, score_dict, policy_choice, scored
from broker.models import ACTIVE_ATTEMPT_STATES, Activity, CheckAttempt, User
from broker.runtime import Runtime
from broker.services import NotFound


def attempt_view(rt: Runtime, attempt_id: int, as_instructor: bool, *, user_id: int | None = None) -> dict[str, Any]:
    """An attempt as JSON for the lab page (polled while it runs) and the instructor view.

    With `user_id`, an attempt on another user's lab is NotFound (unless `as_instructor`). In exam mode
    (the activity's `hide_results_until` is in the future) a learner sees only the attempt's state and
    which checks have run ("pending", "running", "done"): no pass or fail, feedback, hints or score, and
    `results_hidden_until` says until when. Instructors always see everything.
    """
    with rt.session() as session:
        attempt = session.get(CheckAttempt, attempt_id)
        if attempt is None or (user_id is not None and attempt.user_id != user_id and not as_instructor):
            raise NotFound(f"no check attempt {attempt_id}")
        hide_until = attempt.activity.hide_results_until
        hidden = not as_instructor and hide_until is not None and hide_until > utcnow()
        results = attempt.results or []
        view: dict[str, Any] = {
            "id": attempt.id,
            "lab_id": attempt.lab_id,
            "state": attempt.state,
            "finished": attempt.state not in ACTIVE_ATTEMPT_STATES,
            "trigger": attempt.trigger,
            "created_at": _time(attempt.created_at),
            "finished_at": _time(attempt.finished_at),
            "error": attempt.error,
            "results_hidden_until": _time(hide_until) if hidden else None,
        }
        if hidden:
            view.update(score_given=None, score_maximum=None, passed=None, total=len(results), checks=[
                {"id": r.get("id"), "title": r.get("title"), "state": _progress_only(r.get("state", "pending"))} for r in results
            ])
            return view
        view.update(
            score_given=attempt.score_given,
            score_maximum=attempt.score_maximum,
            passed=sum(1 for r in results if r.get("state") == "passed"),
            total=len(results),
            checks=[
                {key: r.get(key) for key in ("id", "title", "host", "weight", "state", "feedback", "hint", "timed_out", "seconds")}
                for r in results
            ],
        )
        return view


def _progress_only(state: str) -> str:
    return state if state in ("pending", "running") else "done"


def latest_attempt_id(rt: Runtime, lab_id: int) -> int | None:
    """The lab's newest attempt, if any (the lab page shows it on load)."""
    with rt.session() as session:
        return session.scalar(
            select(CheckAttempt.id).where(CheckAttempt.lab_id == lab_id).order_by(CheckAttempt.created_at.desc(), CheckAttempt.id.desc()).limit(1)
        )


def activity_attempts(rt: Runtime, activity_id: int) -> list[dict[str, Any]]:
    """Every learner with attempts on the activity, by name: their attempts (newest first) and the
    score that counts under the activity's policy (`score`, None while no attempt has finished)."""
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise NotFound(f"no activity {activity_id}")
        rows = session.execute(
            select(CheckAttempt, User)
            .join(User, CheckAttempt.user_id == User.id)
            .where(CheckAttempt.activity_id == activity_id)
            .order_by(CheckAttempt.created_at, CheckAttempt.id)
        ).all()
        learners: dict[int, dict[str, Any]] = {}
        done: dict[int, list[Scored]] = {}
        for attempt, user in rows:
            entry = learners.setdefault(user.id, {"user_id": user.id, "name": user.name or user.subject, "attempts": []})
            results = attempt.results or []
            entry["attempts"].insert(0, {
                "id": attempt.id, "lab_id": attempt.lab_id, "state": attempt.state, "trigger": attempt.trigger,
                "score_given": attempt.score_given, "score_maximum": attempt.score_maximum,
                "passed": sum(1 for r in results if r.get("state") == "passed"), "total": len(results),
                "created_at": _time(attempt.created_at), "finished_at": _time(attempt.finished_at), "error": attempt.error,
            })
            if attempt.state == "done":
                done.setdefault(user.id, []).append(scored(attempt))
        for uid, entry in learners.items():
            entry["score"] = score_dict(policy_choice(activity.grading_policy, done.get(uid, [])))
        return sorted(learners.values(), key=lambda e: (e["name"].lower(), e["user_id"]))


def _time(moment: datetime | None) -> str | None:
    """Naive UTC as ISO 8601 with its zone, so a browser reads it right."""
    return None if moment is None else moment.isoformat(timespec="seconds") + "Z"
