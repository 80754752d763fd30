"""Check attempts as the pages show them: the lab page polls one attempt, the instructor view lists an
activity's learners with their attempts and current grade. Exam mode hides results from learners here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.grades import Scored, score_dict, policy_choice, scored
from broker.models import ACTIVE_ATTEMPT_STATES, Activity, CheckAttempt, ScoreOutbox, User
from broker.runtime import Runtime
from broker.services import NotFound


# What the learner reads under their score about its way to the LMS gradebook (the newest outbox row of
# the activity and learner): an LMS that is down must not look like a lost grade.
GRADEBOOK = {
    "sending": "Your score is recorded and is being sent to your course's gradebook.",
    "waiting": "Your score is recorded. Your course's gradebook is not answering right now; LabDesk will send it as soon as it does.",
    "sent": "Your score was sent to your course's gradebook.",
    "failed": "Your score is recorded in LabDesk but could not be sent to your course's gradebook. Please tell your instructor.",
}


def gradebook(session: Session, activity_id: int, user_id: int) -> dict[str, str] | None:
    """Where the learner's latest score for the activity is on its way to the LMS, with the sentence to
    show; None when no score was recorded. "waiting": a delivery of a score still pending failed (scores
    go out in order, so a newer one waits behind it) and the outbox retries."""
    mine = (ScoreOutbox.activity_id == activity_id, ScoreOutbox.user_id == user_id)
    latest = session.scalar(select(ScoreOutbox.state).where(*mine).order_by(ScoreOutbox.id.desc()).limit(1))
    if latest is None:
        return None
    state = latest
    if latest == "pending":
        failed_before = session.scalar(select(ScoreOutbox.id).where(*mine, ScoreOutbox.state == "pending", ScoreOutbox.attempts > 0).limit(1))
        state = "waiting" if failed_before is not None else "sending"
    return {"state": state, "message": GRADEBOOK[state]}


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
            "gradebook": None,  # hidden in exam mode, as the score is
        }
        if hidden:
            view.update(score_given=None, score_maximum=None, passed=None, total=len(results), checks=[
                {"id": r.get("id"), "title": r.get("title"), "state": _progress_only(r.get("state", "pending"))} for r in results
            ])
            return view
        view.update(
            gradebook=gradebook(session, attempt.activity_id, attempt.user_id) if attempt.state == "done" else None,
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
