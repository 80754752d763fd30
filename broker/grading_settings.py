"""An activity's grading settings, as an instructor sets them: policy, automatic checks, due date and
exam mode, validated with messages an instructor can act on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from broker.errors import LabDeskError
from broker.grades import POLICIES
from broker.models import Activity
from broker.runtime import Runtime
from broker.services import NotFound

AUTO_CHECKS = ("none", "on_suspend", "at_deadline")


class InvalidGrading(LabDeskError, ValueError):
    """A grading setting cannot be stored as given; the message names the setting and the reason."""


_UNSET: Any = object()


def set_grading(
    rt: Runtime,
    activity_id: int,
    *,
    grading_policy: str | None = None,
    auto_check: str | None = None,
    due_at: datetime | None = _UNSET,
    hide_results_until: datetime | None = _UNSET,
) -> dict[str, Any]:
    """Change an activity's grading settings (the instructor view, deep linking); what is not given stays.
    Times may be aware (converted to UTC) or naive UTC; None clears them. Returns the settings now."""
    if grading_policy is not None and grading_policy not in POLICIES:
        raise InvalidGrading(f"grading_policy must be one of {', '.join(POLICIES)}; got {grading_policy!r}")
    if auto_check is not None and auto_check not in AUTO_CHECKS:
        raise InvalidGrading(f"auto_check must be one of {', '.join(AUTO_CHECKS)}; got {auto_check!r}")
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise NotFound(f"no activity {activity_id}")
        if grading_policy is not None:
            activity.grading_policy = grading_policy
        if auto_check is not None:
            activity.auto_check = auto_check
        if due_at is not _UNSET:
            activity.due_at = _naive_utc(due_at, "due_at")
        if hide_results_until is not _UNSET:
            activity.hide_results_until = _naive_utc(hide_results_until, "hide_results_until")
        if activity.auto_check == "at_deadline" and activity.due_at is None:
            raise InvalidGrading("Checks at the due date need a due date: set one, or choose another automatic check.")
        session.commit()
        return {"grading_policy": activity.grading_policy, "auto_check": activity.auto_check,
                "due_at": activity.due_at, "hide_results_until": activity.hide_results_until}


def _naive_utc(moment: datetime | None, name: str) -> datetime | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        raise InvalidGrading(f"{name} must be a date and time, got {moment!r}")
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment
