"""What a Heat stack's `ACTION_STATUS` means for a lab (a pure mapping, unit-tested without Heat).

Heat reports an action (CREATE, SUSPEND, RESUME, DELETE, UPDATE, CHECK, ROLLBACK, SNAPSHOT, RESTORE,
ADOPT) and a status (IN_PROGRESS, COMPLETE, FAILED). Every IN_PROGRESS is PENDING with progress from
the stack's resources; a completed suspend is SUSPENDED; a completed delete is GONE (Heat keeps answering
a deleted stack's id for a while, and a 404 means the same); a completed rollback means the create was
undone, so the lab has nothing to run on; every FAILED is ERROR carrying Heat's `stack_status_reason`.
"""

from __future__ import annotations

import re
from typing import Iterable

from broker.connector import Observation, ObservedState

_COMPLETE_MEANS = {
    "CREATE": ObservedState.READY,
    "RESUME": ObservedState.READY,
    "UPDATE": ObservedState.READY,
    "CHECK": ObservedState.READY,
    "SNAPSHOT": ObservedState.READY,
    "RESTORE": ObservedState.READY,
    "ADOPT": ObservedState.READY,
    "SUSPEND": ObservedState.SUSPENDED,
    "DELETE": ObservedState.GONE,
    "ROLLBACK": ObservedState.ERROR,
}
_WAITING = {
    "CREATE": "Creating the lab machines",
    "SUSPEND": "Suspending the lab",
    "RESUME": "Resuming the lab",
    "DELETE": "Deleting the lab",
    "UPDATE": "Updating the lab",
    "CHECK": "Checking the lab",
    "ROLLBACK": "Undoing a failed change",
    "SNAPSHOT": "Taking a snapshot",
    "RESTORE": "Restoring a snapshot",
    "ADOPT": "Adopting the lab",
}
GONE_MESSAGE = "This lab no longer exists on its backend."
_STATUS = re.compile(r"([A-Z]+)_(IN_PROGRESS|COMPLETE|FAILED)")


def split_status(stack_status: str) -> tuple[str, str]:
    """'CREATE_IN_PROGRESS' -> ('CREATE', 'IN_PROGRESS')."""
    found = _STATUS.fullmatch(stack_status)
    if not found:
        raise ValueError(f"not a Heat stack status: {stack_status!r}")
    return found.group(1), found.group(2)


def progress(action: str, resource_statuses: Iterable[str]) -> int:
    """Percentage of the stack's resources that have finished the current action (0 without resources)."""
    statuses = list(resource_statuses)
    if not statuses:
        return 0
    done = sum(1 for status in statuses if status == f"{action}_COMPLETE")
    return min(99, round(100 * done / len(statuses)))


def observation(stack_status: str, reason: str = "", resource_statuses: Iterable[str] = ()) -> Observation:
    """The lab's observed state for a stack in `stack_status`."""
    action, status = split_status(stack_status)
    if status == "FAILED":
        return Observation(ObservedState.ERROR, 0, f"Heat {action.lower()} failed: {reason}" if reason else f"Heat {action.lower()} failed")
    if status == "IN_PROGRESS":
        message = _WAITING.get(action, f"Heat is busy ({action.lower()})")
        return Observation(ObservedState.PENDING, progress(action, resource_statuses), message)
    state = _COMPLETE_MEANS.get(action, ObservedState.READY)
    if state == ObservedState.GONE:
        return Observation(state, 100, GONE_MESSAGE)
    if state == ObservedState.ERROR:
        return Observation(state, 0, f"The lab's creation failed and was rolled back: {reason}".strip())
    return Observation(state, 100, "")
