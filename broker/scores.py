"""Recording a learner's score for the LMS gradebook (LTI Assignment and Grade Services).

A score is first written to the `score_outbox` table, as the exact JSON the LMS will receive, and only
then handed to a delivery job: an LMS that is down, slow or refusing loses nothing, and a retry resends
the same bytes, timestamp included. The broker never imports `lti`, so the job is named by its path.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from numbers import Real

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.dispatch import DEFAULT_QUEUE, JobRequest
from broker.errors import LabDeskError
from broker.models import Activity, ScoreOutbox, User
from broker.runtime import Runtime

log = logging.getLogger(__name__)

# The AGS vocabularies (https://www.imsglobal.org/spec/lti-ags/v2p0#score-publish-service).
ACTIVITY_PROGRESS = ("Initialized", "Started", "InProgress", "Submitted", "Completed")
GRADING_PROGRESS = ("FullyGraded", "Pending", "PendingManual", "Failed", "NotReady")
DELIVER_JOB = "lti.outbox.deliver"  # a dotted path: the broker must not import lti
ONE_MS = timedelta(milliseconds=1)


class InvalidScore(LabDeskError, ValueError):
    """The score cannot be sent as given; the message says which value is wrong and why."""


def delivery_job(outbox_id: int, attempt: int, suffix: str = "", delay: int = 0) -> JobRequest:
    """The job that delivers outbox row `outbox_id`; its id is unique to the row and the attempt."""
    job_id = f"score-{outbox_id}-{attempt}" + (f"-{suffix}" if suffix else "")
    return JobRequest(DEFAULT_QUEUE, job_id, DELIVER_JOB, (outbox_id,), delay=delay)


def record_score(
    rt: Runtime,
    activity_id: int,
    user_id: int,
    score_given: float,
    score_maximum: float,
    activity_progress: str,
    grading_progress: str,
    comment: str = "",
    not_before: datetime | None = None,
) -> int:
    """Queue a score for the LMS and return its outbox id.

    `not_before` holds the score back until then (exam mode: a grade must not reach the LMS gradebook
    before results are released); the outbox sweep sends it once it is due, with its original timestamp.

    The row is committed before any delivery is tried, so the score survives an LMS outage and a Redis
    hiccup alike (the outbox sweep finds rows whose job never got queued).
    """
    given, maximum = _checked_numbers(score_given, score_maximum)
    _check_vocabulary("activity_progress", activity_progress, ACTIVITY_PROGRESS)
    _check_vocabulary("grading_progress", grading_progress, GRADING_PROGRESS)
    with rt.session() as session:
        subject = _lock_user(session, user_id)
        if session.get(Activity, activity_id) is None:
            raise InvalidScore(f"no activity {activity_id}")
        payload = {
            "userId": subject,
            "scoreGiven": given,
            "scoreMaximum": maximum,
            "activityProgress": activity_progress,
            "gradingProgress": grading_progress,
            "comment": str(comment),
            "timestamp": _next_timestamp(session, activity_id, user_id),
        }
        due = max(utcnow(), not_before) if not_before else utcnow()
        row = ScoreOutbox(activity_id=activity_id, user_id=user_id, payload=payload, next_attempt_at=due)
        session.add(row)
        session.commit()
        outbox_id = row.id
    if due <= utcnow():
        _enqueue(rt, outbox_id)
    return outbox_id


def _checked_numbers(given: float, maximum: float) -> tuple[float, float]:
    for name, value in (("score_given", given), ("score_maximum", maximum)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise InvalidScore(f"{name} must be a finite number, got {value!r}")
    if maximum <= 0:
        raise InvalidScore(f"score_maximum must be greater than 0, got {maximum!r}")
    if not 0 <= given <= maximum:
        raise InvalidScore(f"score_given must be between 0 and score_maximum ({maximum!r}), got {given!r}")
    return _plain(given), _plain(maximum)


def _plain(value: float) -> float:
    """A whole number is sent as an int ("7", not "7.0", in the JSON, which some gradebooks show as is);
    anything else (a Decimal, a Fraction) as a float."""
    number = float(value)
    return int(number) if number.is_integer() else number


def _check_vocabulary(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidScore(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _lock_user(session: Session, user_id: int) -> str:
    """Serialise scores of one learner until commit, and return their LTI subject.

    A no-op UPDATE is the one lock both databases share: PostgreSQL locks the user's row, SQLite takes
    its write lock. Two scores recorded at the same moment then cannot both read the same "last
    timestamp", so timestamps (and outbox ids) of one learner only ever increase.
    """
    locked = session.execute(update(User).where(User.id == user_id).values(subject=User.subject))
    if locked.rowcount != 1:
        raise InvalidScore(f"no user {user_id}")
    subject = session.scalar(select(User.subject).where(User.id == user_id))
    assert subject is not None
    return subject


def _next_timestamp(session: Session, activity_id: int, user_id: int) -> str:
    """Now, in milliseconds, but strictly after the previous score of this learner for this activity.

    LMSs ignore (or refuse) a score whose timestamp is not newer than the one they hold, so two scores
    within one millisecond, or a clock that stepped back, would otherwise lose the newer one.
    """
    now = utcnow().replace(tzinfo=UTC)
    stamp = now.replace(microsecond=now.microsecond // 1000 * 1000)
    previous = session.scalar(
        select(ScoreOutbox.payload)
        .where(ScoreOutbox.activity_id == activity_id, ScoreOutbox.user_id == user_id)
        .order_by(ScoreOutbox.id.desc())
        .limit(1)
    )
    if previous and previous.get("timestamp"):
        stamp = max(stamp, datetime.fromisoformat(previous["timestamp"]) + ONE_MS)
    return stamp.astimezone(UTC).isoformat(timespec="milliseconds")


def _enqueue(rt: Runtime, outbox_id: int) -> None:
    """Hand the row to a worker now; if Redis is unreachable the committed row waits for the sweep."""
    try:
        rt.dispatcher.enqueue(delivery_job(outbox_id, 0))
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("score %s is saved but not queued (%s); the outbox sweep will deliver it", outbox_id, exc)
