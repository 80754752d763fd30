"""`labdesk grades …`: the score outbox, for an admin looking after LMS gradebooks."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select

from broker.cli import emit, fails_cleanly, json_option, rt
from broker.errors import LabDeskError
from broker.models import Activity, ScoreOutbox, User
from broker.services import NotFound
from lti import outbox

STATES = ("pending", "sent", "failed")


@click.group()
def grades() -> None:
    """Scores on their way to LMS gradebooks."""


def score_dict(row: ScoreOutbox, subject: str, activity: str) -> dict[str, Any]:
    payload = row.payload
    return {
        "id": row.id, "state": row.state, "activity": activity, "user": subject,
        "score_given": payload.get("scoreGiven"), "score_maximum": payload.get("scoreMaximum"),
        "timestamp": payload.get("timestamp"), "attempts": row.attempts, "next_attempt_at": row.next_attempt_at,
        "last_error": row.last_error, "created_at": row.created_at, "sent_at": row.sent_at,
    }


def _line(r: dict[str, Any]) -> str:
    line = f"{r['id']:>6}  {r['state']:<8} {r['score_given']}/{r['score_maximum']:<6} {r['user']:<20} {r['activity']}"
    return line + (f"  ({r['last_error']})" if r["last_error"] and r["state"] != "sent" else "")


@grades.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only scores in this state.")
@json_option
@fails_cleanly
def grades_list(state: str | None, as_json: bool) -> None:
    """List scores, newest first."""
    with rt().session() as session:
        query = (
            select(ScoreOutbox, User.subject, Activity.title)
            .join(User, ScoreOutbox.user_id == User.id)
            .join(Activity, ScoreOutbox.activity_id == Activity.id)
            .order_by(ScoreOutbox.id.desc())
            .limit(1000)
        )
        if state:
            query = query.where(ScoreOutbox.state == state)
        rows = [score_dict(row, subject, title) for row, subject, title in session.execute(query)]
    emit(rows, as_json, lambda rs: [_line(r) for r in rs])


@grades.command("retry")
@click.argument("outbox_id", type=int, required=False)
@click.option("--all-failed", is_flag=True, help="Every failed score.")
@json_option
@fails_cleanly
def grades_retry(outbox_id: int | None, all_failed: bool, as_json: bool) -> None:
    """Send a failed score (ID) or every failed one again, unchanged."""
    if (outbox_id is None) == (not all_failed):
        raise click.UsageError("give a score ID or --all-failed (not both)")
    if outbox_id is not None:
        _check_failed(outbox_id)
    ids = outbox.retry(rt(), None if all_failed else [outbox_id])  # type: ignore[list-item]
    emit({"requeued": ids}, as_json, lambda d: [f"{len(ids)} score(s) queued again: {', '.join(map(str, ids)) or '-'}"])


def _check_failed(outbox_id: int) -> None:
    with rt().session() as session:
        row = session.get(ScoreOutbox, outbox_id)
        if row is None:
            raise NotFound(f"no score {outbox_id}")
        if row.state != "failed":
            raise LabDeskError(f"score {outbox_id} is {row.state}; only failed scores can be retried")
