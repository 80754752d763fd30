"""Delivering the score outbox (`broker.scores` fills it) to LMS gradebooks.

`deliver(outbox_id)` is the rq job for one row. It sends the stored payload unchanged, so a retry carries
the original timestamp and the LMS keeps the newest score whatever the order of retries. Per learner and
activity, rows go out strictly in order: a row waits while an older one of the same pair is pending, and
each delivered (or failed) row hands on to the next. A worker claims a row before sending (a lease on
`next_attempt_at`), so duplicate jobs for one row never send it twice.

An answer can be lost after the LMS took the score (a timeout, a dropped connection). The retry sends the
same payload, timestamp included, and an LMS that holds to increasing timestamps refuses it with 409. Rows
of a pair go out strictly in order, so after an unanswered attempt that 409 can only mean the LMS holds
this very score (or a newer one LabDesk did not send): the row counts as sent, not failed.

`deliver_due()` is the sweep on rq's cron (registered through the `labdesk.periodic` entry point): it
enqueues every due row at the head of its pair, which picks up rows whose job was lost (Redis down at
record time, a worker killed mid-send).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, aliased

from broker import runtime
from broker.clock import utcnow
from broker.errors import LabDeskError
from broker.models import ScoreOutbox, User
from broker.runtime import Runtime
from broker.schedule import Periodic, timed
from broker.scores import delivery_job
from lti.ags import post_score
from lti.service_token import PermanentServiceError, TransientServiceError

log = logging.getLogger(__name__)

FIRST_BACKOFF = 10  # seconds before the second attempt; doubles per failure
MAX_BACKOFF = 600
ERROR_CHARS = 500  # the width of score_outbox.last_error


def deliver(outbox_id: int) -> str:
    """Send one outbox row if it is pending, due and first in line; returns what happened (for logs)."""
    rt = runtime.current()
    with rt.session() as session:
        row = session.get(ScoreOutbox, outbox_id)
        if row is None or row.state != "pending":
            return "not pending"
        if row.next_attempt_at > utcnow():
            return "not due"
        if _older_pending(session, row):
            return "waiting for an older score"  # that one's delivery hands on to this one
        if not _claim(rt, session, row):
            return "taken by another worker"
        payload = _with_user(session, row)
    return _attempt(rt, row, payload)


def _attempt(rt: Runtime, row: ScoreOutbox, payload: dict[str, Any]) -> str:
    try:
        post_score(rt, row.activity_id, payload)
    except TransientServiceError as exc:
        return _back_off(rt, row, str(exc))
    except PermanentServiceError as exc:
        if not _already_taken(row, exc):
            _fail(rt, row, str(exc))
            return "failed"
        log.info("score %s: taken as delivered, the LMS already holds it (%s)", row.id, exc)
    except LabDeskError as exc:  # refused by the LMS, or nothing to send it to (no grade service, platform removed)
        _fail(rt, row, str(exc))
        return "failed"
    _finish(rt, row, state="sent", sent_at=utcnow(), last_error="")
    return "sent"


def _already_taken(row: ScoreOutbox, refused: PermanentServiceError) -> bool:
    """A 409 for a row that was sent before without an answer: the LMS holds the score already."""
    return refused.status == 409 and row.attempts > 0


def _older_pending(session: Session, row: ScoreOutbox) -> bool:
    older = select(ScoreOutbox.id).where(
        ScoreOutbox.activity_id == row.activity_id,
        ScoreOutbox.user_id == row.user_id,
        ScoreOutbox.state == "pending",
        ScoreOutbox.id < row.id,
    )
    return session.scalar(older.limit(1)) is not None


def _claim(rt: Runtime, session: Session, row: ScoreOutbox) -> bool:
    """Compare-and-set the row's due time to the end of a lease: of several jobs for the same row, only
    one sends it, and if that worker dies the row is due again once the lease is over."""
    lease = utcnow() + timedelta(seconds=8 * rt.settings.lti_http_timeout + 30)
    claimed = session.execute(
        update(ScoreOutbox)
        .where(ScoreOutbox.id == row.id, ScoreOutbox.state == "pending", ScoreOutbox.next_attempt_at == row.next_attempt_at)
        .values(next_attempt_at=lease)
    )
    session.commit()
    return claimed.rowcount == 1


def _with_user(session: Session, row: ScoreOutbox) -> dict[str, Any]:
    """The stored payload as is; only a row written without `userId` gets the learner's LTI subject."""
    if row.payload.get("userId"):
        return dict(row.payload)
    return {**row.payload, "userId": session.scalar(select(User.subject).where(User.id == row.user_id))}


def backoff(attempts: int) -> int:
    """Seconds to wait after `attempts` failures: 10, 20, 40 … up to 10 minutes."""
    return min(FIRST_BACKOFF * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


def _back_off(rt: Runtime, row: ScoreOutbox, reason: str) -> str:
    """Try again later, or give up once the score has waited `outbox_give_up_after` seconds."""
    attempts = row.attempts + 1
    if utcnow() - row.created_at >= timedelta(seconds=rt.settings.outbox_give_up_after):
        _fail(rt, row, f"gave up after {attempts} attempts: {reason}")
        return "failed"
    delay = backoff(attempts)
    log.warning("score %s not delivered (attempt %s), retrying in %ss: %s", row.id, attempts, delay, reason)
    _finish(rt, row, attempts=attempts, next_attempt_at=utcnow() + timedelta(seconds=delay), last_error=reason[:ERROR_CHARS])
    # rq keeps scheduled times in whole seconds (rounded down): a second more, so the job is never early.
    rt.dispatcher.enqueue(delivery_job(row.id, attempts, delay=delay + 1))
    return "retrying"


def _fail(rt: Runtime, row: ScoreOutbox, reason: str) -> None:
    log.error("score %s failed for good: %s", row.id, reason)
    _finish(rt, row, state="failed", attempts=row.attempts + 1, last_error=reason[:ERROR_CHARS])


def _finish(rt: Runtime, row: ScoreOutbox, **values: Any) -> None:
    """Record the attempt's outcome; a row that left `pending` hands on to the next one of its pair."""
    with rt.session() as session:
        session.execute(update(ScoreOutbox).where(ScoreOutbox.id == row.id).values(**values))
        session.commit()
        if values.get("state") in ("sent", "failed"):
            _hand_on(rt, session, row)


def _hand_on(rt: Runtime, session: Session, row: ScoreOutbox) -> None:
    following = session.execute(
        select(ScoreOutbox.id, ScoreOutbox.attempts)
        .where(
            ScoreOutbox.activity_id == row.activity_id,
            ScoreOutbox.user_id == row.user_id,
            ScoreOutbox.state == "pending",
            ScoreOutbox.id > row.id,
        )
        .order_by(ScoreOutbox.id)
        .limit(1)
    ).first()
    if following is not None:
        rt.dispatcher.enqueue(delivery_job(following.id, following.attempts, suffix=f"after-{row.id}"))


# -- the sweep and retries -----------------------------------------------------------------------------
def due_heads(session: Session, limit: int) -> list[tuple[int, int]]:
    """(id, attempts) of due pending rows with no older pending row of their pair: the rows that may go now."""
    older = aliased(ScoreOutbox)
    blocked = exists().where(
        and_(
            older.activity_id == ScoreOutbox.activity_id,
            older.user_id == ScoreOutbox.user_id,
            older.state == "pending",
            older.id < ScoreOutbox.id,
        )
    )
    query = (
        select(ScoreOutbox.id, ScoreOutbox.attempts)
        .where(ScoreOutbox.state == "pending", ScoreOutbox.next_attempt_at <= utcnow(), ~blocked)
        .order_by(ScoreOutbox.id)
        .limit(limit)
    )
    return [(outbox_id, attempts) for outbox_id, attempts in session.execute(query)]


def sweep(rt: Runtime) -> int:
    """Enqueue every due row that is first in line, in one Redis round trip; returns how many."""
    with rt.session() as session:
        heads = due_heads(session, rt.settings.sweep_batch)
    if heads:
        rt.dispatcher.enqueue_many([delivery_job(outbox_id, attempts) for outbox_id, attempts in heads])
    return len(heads)


def deliver_due() -> int:
    """The cron job (no arguments): the sweep, timed for /metrics."""
    return timed("outbox", sweep)


SWEEP = Periodic(deliver_due, "outbox_interval")


def retry(rt: Runtime, outbox_ids: list[int] | None = None) -> list[int]:
    """Put failed rows (these ids, or every failed one when None) back to pending, payload unchanged,
    and queue them; returns the ids re-queued. The caller checks that named ids exist and had failed."""
    with rt.session() as session:
        query = select(ScoreOutbox.id).where(ScoreOutbox.state == "failed")
        if outbox_ids is not None:
            query = query.where(ScoreOutbox.id.in_(outbox_ids))
        ids = list(session.scalars(query.order_by(ScoreOutbox.id)))
        if ids:
            session.execute(
                update(ScoreOutbox)
                .where(ScoreOutbox.id.in_(ids), ScoreOutbox.state == "failed")
                .values(state="pending", next_attempt_at=utcnow())
            )
            session.commit()
    if ids:
        sweep(rt)
    return ids
