"""The launch gate: what an instructor's limits allow before a learner's lab is created or resumed.

`broker.services.launch` (and `reset`, before the old lab goes) calls `check` when it is about to create
a lab or resume a suspended one; a lab that is already running, or on its way, is returned as it is
(the usage sweep, `broker.usage_limits.sweep`, takes care of a running lab that goes over its hours).
Two limits are checked, in this order:

1. the activity's trust level (`broker.trust`): a learner below it is told which labs unlock it;
2. its weekly hours (`broker.usage_limits`): a learner who used them is told when the lab opens again.

A refusal is `broker.services.LaunchRefused`, whose message the web shows the learner as it is (an LTI
launch, the lab page's Resume and the activity list alike). Instructors of the course are never refused
for their own labs. A launch on a learner's behalf is judged as the learner's own, whoever asks: an
instructor's reset of their lab (`broker.class_labs`, checked before the old lab goes) and a class
session's pre-warm (`broker.class_schedule`), else a pre-warmed lab would hand a learner a lab the gate
refuses them. Only an admin acting on a learner's lab is let through.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from broker import trust, usage_limits
from broker.models import Activity

EXEMPT_ACTORS = ("admin:",)


def check(session: Session, user_id: int, activity_id: int, actor: str) -> None:
    """Raise LaunchRefused when the learner may not start or resume their lab of this activity now."""
    from broker import services  # broker.services imports this module

    refusal = refusal_for(session, user_id, activity_id, actor)
    if refusal:
        raise services.LaunchRefused(refusal)


def refusal_for(session: Session, user_id: int, activity_id: int, actor: str) -> str | None:
    """The learner's message when a limit refuses them, or None when they may go on."""
    activity = session.get(Activity, activity_id)
    if activity is None or (activity.min_trust_level <= 0 and activity.weekly_hours_limit is None):
        return None  # no limits: the usual launch pays one small read
    if actor.startswith(EXEMPT_ACTORS) or usage_limits.teaches(session, activity.course_id, user_id):
        return None
    short = trust.shortfall(session, user_id, activity)
    if short is not None:
        return short.message()
    try:
        usage_limits.check(session, user_id, activity)
    except usage_limits.LimitReached as reached:
        return str(reached)
    return None

