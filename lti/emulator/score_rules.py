"""What a score posted to the Assignment and Grade Services must look like (AGS 2.0, "Score publish
service"), and its timestamp as a number the emulator can order scores by.

The spec allows extra credit, so a scoreGiven above scoreMaximum is accepted; a negative one is not.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

ACTIVITY_PROGRESS = ("Initialized", "Started", "InProgress", "Submitted", "Completed")
GRADING_PROGRESS = ("FullyGraded", "Pending", "PendingManual", "Failed", "NotReady")

# ISO 8601 with sub-second precision and an explicit zone, e.g. 2017-04-16T18:54:36.736+00:00.
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,9}(Z|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ScoreRejected(ValueError):
    """The score breaks a rule of the spec; the message says which."""


def check(score: Any) -> int:
    """Validate a posted score; returns its timestamp in microseconds since the epoch."""
    if not isinstance(score, dict):
        raise ScoreRejected("the score must be a JSON object")
    if not isinstance(score.get("userId"), str) or not score["userId"]:
        raise ScoreRejected("userId is required (the user's LTI sub)")
    _check_progress(score)
    _check_numbers(score)
    if "comment" in score and score["comment"] is not None and not isinstance(score["comment"], str):
        raise ScoreRejected("comment must be a string")
    return timestamp_us(score.get("timestamp"))


def _check_progress(score: dict[str, Any]) -> None:
    for name, allowed in (("activityProgress", ACTIVITY_PROGRESS), ("gradingProgress", GRADING_PROGRESS)):
        if score.get(name) not in allowed:
            raise ScoreRejected(f"{name} must be one of {', '.join(allowed)}; got {score.get(name)!r}")


def _check_numbers(score: dict[str, Any]) -> None:
    given, maximum = score.get("scoreGiven"), score.get("scoreMaximum")
    if given is None:
        if maximum is not None and not _number(maximum, positive=True):
            raise ScoreRejected("scoreMaximum must be a number greater than 0")
        return
    if not _number(given, positive=False):
        raise ScoreRejected(f"scoreGiven must be a number of 0 or more; got {given!r}")
    if maximum is None:
        raise ScoreRejected("scoreMaximum is required when scoreGiven is present")
    if not _number(maximum, positive=True):
        raise ScoreRejected(f"scoreMaximum must be a number greater than 0; got {maximum!r}")


def _number(value: Any, positive: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 if positive else value >= 0


def timestamp_us(value: Any) -> int:
    """An AGS timestamp as microseconds since the epoch."""
    if not isinstance(value, str) or not _TIMESTAMP.match(value):
        raise ScoreRejected(f"timestamp must be ISO 8601 with sub-second precision and a zone, "
                            f"e.g. 2024-05-01T12:30:45.123+00:00; got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ScoreRejected(f"timestamp is not a valid date and time: {value!r}") from None
    return (moment - _EPOCH) // timedelta(microseconds=1)
