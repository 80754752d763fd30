"""Check attempts: running an activity's checks on a learner's lab, scoring them, and sending the grade.

A learner (or an instructor, the suspend job, the deadline sweep) starts an attempt with `start_check`:
one row in `check_attempts`, every check "pending", and one rq job (`check-<attempt id>`) on the lab's
backend queue. The job, `run_attempt`, asks the connector where checks can run (`check_targets`), runs
each check there through its grading hook (`broker.grading`), commits each result as it comes (the lab
page shows the progress), scores the attempt (`broker.checks.score_of`) and then hands it to
`broker.grades`, which applies the activity's policy and sends a changed grade to the LMS.

At most one attempt per lab is under way (queued or running): a partial unique index enforces it, and a
second "Check my work" gets the attempt already under way. An attempt whose job died (worker killed) is
noticed by its job's status in rq and closed as an error, so it never blocks the lab's next check.

Automatic checks: an activity with `auto_check = "on_suspend"` has its checks run inside the suspend job,
before the backend is asked to suspend (`check_before_suspend`, called by `broker.jobs`); one with
`"at_deadline"` gets a "deadline" attempt for every running lab once `due_at` has passed (`check_due`,
a periodic sweep). Exam mode (`hide_results_until`) hides results from learners in `broker.attempt_views`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job
from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import lab_jobs, runtime
from broker.lab_jobs import LabSnapshot
from broker.checks import CheckDefinition, checks_of, max_score_of, score_of
from broker.clock import utcnow
from broker.connector import CheckTarget
from broker.errors import ConfigError, ConnectorError, InvalidTransition, LabDeskError, UnknownBackend
from broker.grading import CheckOutcome, CheckScript, runner_for
from broker.lifecycle import LabState
from broker.models import ACTIVE_ATTEMPT_STATES, Activity, CheckAttempt, Lab, LabEvent
from broker.runtime import Runtime
from broker.grades import deliver_grade
from broker.services import NotFound

log = logging.getLogger(__name__)
S = LabState

TRIGGERS = ("learner", "suspend", "deadline", "instructor")
FEEDBACK_LIMIT = 500
HINT_LINES = 5

_MISCONFIGURED = "Checks cannot run on this lab right now. Please tell your instructor."
_NOT_RUNNING = "The lab is not running any more. Open it and check again."
_DIED = "The check stopped before it finished. Run it again."
_CRASHED = "The checks could not run. Try again; if it fails again, tell your instructor."


class NotGradable(LabDeskError):
    """The lab's image has no checks to run."""


# -- starting an attempt --------------------------------------------------------------------------------
def start_check(rt: Runtime, user_id: int, lab_id: int, trigger: str = "learner") -> int:
    """Queue a run of the checks on the learner's running lab and return the attempt's id.

    `user_id` is the lab's owner (for an instructor's check too: pass the learner's id and
    trigger="instructor"). When an attempt is already under way on the lab, its id is returned instead
    of a new one. Raises NotFound (no such lab of this user), InvalidTransition (the lab is not running),
    NotGradable (the image has no checks) or ServiceUnavailable (the job queue is down; nothing is kept).
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r} (expected one of: {', '.join(TRIGGERS)})")
    lab_jobs.require_queue(rt)
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.user_id != user_id:
            raise NotFound(f"no lab {lab_id} of user {user_id}")
        if lab.state != S.RUNNING.value:
            raise InvalidTransition(f"lab {lab_id} is {lab.state}; checks run only on a running lab: open the lab, then check again")
        image = lab.activity.image
        definitions = checks_of(image.spec)
        if not definitions:
            raise NotGradable(f"this lab has nothing to check: image {image.slug} version {image.version} defines no checks")
        attempt_id, new = lab_jobs.insert_once(
            session, lambda: _new_attempt(lab, trigger, definitions), lambda: _under_way(rt, session, lab_id), "check"
        )
        if not new:
            return attempt_id
        queue = lab.backend.queue_name
    # At the front of the backend's queue: the learner watches the result come, and a class's launch wave
    # put them 161 s behind it at the median in bench/soak.py (docs/load.md).
    lab_jobs.enqueue_or_delete(rt, CheckAttempt, attempt_id, queue, "check", run_attempt, at_front=True)
    return attempt_id


def _new_attempt(lab: Lab, trigger: str, definitions: list[CheckDefinition]) -> CheckAttempt:
    return CheckAttempt(
        lab_id=lab.id, user_id=lab.user_id, activity_id=lab.activity_id, trigger=trigger, state="queued",
        created_at=utcnow(), results=_pending(definitions), error="",
    )


def _pending(definitions: list[CheckDefinition]) -> list[dict[str, Any]]:
    return [
        {"id": d.id, "title": d.title, "host": d.host, "weight": d.weight, "state": "pending", "feedback": "",
         "hint": "", "timed_out": False, "truncated": False, "seconds": None}
        for d in definitions
    ]


def _under_way(rt: Runtime, session: Session, lab_id: int) -> int | None:
    """The lab's attempt under way, if any; one whose job died is closed as an error first."""
    attempt = session.scalar(
        select(CheckAttempt).where(CheckAttempt.lab_id == lab_id, CheckAttempt.state.in_(ACTIVE_ATTEMPT_STATES))
    )
    return lab_jobs.under_way(rt, attempt, lambda dead: _close_died(session, dead))


def _close_died(session: Session, attempt: CheckAttempt) -> None:
    _close(session, attempt.id, "error", error=_DIED)
    log.warning("check attempt %s: its job %s is gone; closed as an error", attempt.id, attempt.job_id)


# -- running it (the rq job) -----------------------------------------------------------------------------
def run_attempt(attempt_id: int) -> str:
    """Run a queued attempt's checks one by one, score them and deliver the grade; returns the attempt's
    final state ("done" or "error"), or "skipped" when it was no longer queued (run twice, or closed)."""
    rt = runtime.current()
    job = get_current_job()
    with rt.session() as session:
        claimed = session.execute(
            update(CheckAttempt)
            .where(CheckAttempt.id == attempt_id, CheckAttempt.state == "queued")
            .values(state="running", **({"job_id": job.id} if job else {}))
        ).rowcount
        session.commit()
    if claimed != 1:
        return "skipped"
    try:
        state = _run_checks(rt, attempt_id)
    except Exception:  # noqa: BLE001 - a bug or an outage must not leave the attempt "running" for ever
        log.exception("check attempt %s failed", attempt_id)
        with rt.session() as session:
            _close(session, attempt_id, "error", error=_CRASHED)
        return "error"
    if state == "done":
        deliver_grade(rt, attempt_id)
    return state


def _run_checks(rt: Runtime, attempt_id: int) -> str:
    with rt.session() as session:
        attempt = session.get(CheckAttempt, attempt_id)
        assert attempt is not None
        lab = attempt.lab
        info = LabSnapshot.of(lab)
        results = list(attempt.results or [])
        try:
            definitions = checks_of(info.spec)
        except LabDeskError as exc:
            log.error("check attempt %s: %s", attempt_id, exc)
            return _close(session, attempt_id, "error", error=_MISCONFIGURED)
        if [r.get("id") for r in results] != [d.id for d in definitions]:
            results = _pending(definitions)  # the activity moved to another image version meanwhile
        if info.state not in (S.RUNNING.value, S.SUSPENDING.value) or info.handle is None:
            return _close(session, attempt_id, "error", error=_NOT_RUNNING)
        try:
            targets = rt.connector(info.backend).check_targets(info.handle)
        except ConnectorError as exc:
            log.warning("check attempt %s: no check targets: %s", attempt_id, exc)
            return _close(session, attempt_id, "error", error=exc.user_message[:500])
        except (UnknownBackend, ConfigError) as exc:
            log.error("check attempt %s: %s", attempt_id, exc)
            return _close(session, attempt_id, "error", error=_MISCONFIGURED)
        if not targets:
            return _close(session, attempt_id, "error", error="This lab cannot be checked automatically.")
        session.commit()  # end the read transaction before the checks run
        first_host = _first_host(info.spec)
        for i, check in enumerate(definitions):
            results[i] = {**results[i], "state": "running"}
            _save_results(session, attempt_id, results)
            results[i] = {**results[i], **_run_one(check, _target_for(check, targets, first_host))}
            _save_results(session, attempt_id, results)
        maximum = max_score_of(info.spec)
        return _close(session, attempt_id, "done", results=results, score_given=score_of(results, maximum), score_maximum=maximum)


def _run_one(check: CheckDefinition, target: CheckTarget | None) -> dict[str, Any]:
    """One check's result fields: state, feedback, hint (when failed), timed_out, truncated, seconds."""
    started = time.monotonic()
    if target is None:
        outcome = CheckOutcome(None, error=f'this lab has no machine "{check.host}"')
    else:
        try:
            runner = runner_for(target)
            outcome = runner.run(target, CheckScript(check.id, check.script, check.args, check.timeout))
        except ConfigError as exc:  # no grading hook installed for this kind of target
            log.error("check %s: %s", check.id, exc)
            outcome = CheckOutcome(None, error="no grading hook can reach this lab machine; please tell your instructor")
        except Exception:  # noqa: BLE001 - a runner must report, not raise; one that does fails only its check
            log.exception("check %s: the grading hook raised", check.id)
            outcome = CheckOutcome(None, error="the grading hook failed")
    state = "passed" if outcome.passed else ("error" if outcome.error else "failed")
    feedback = _first_line(outcome.stdout)
    if state == "error":
        feedback = f"The check could not run: {outcome.error}"
    elif outcome.timed_out and not feedback:
        feedback = f"The check did not finish within {check.timeout:g} seconds."
    return {
        "state": state,
        "feedback": feedback[:FEEDBACK_LIMIT],
        "hint": (check.hint or _tail(outcome.stderr)) if state == "failed" else "",
        "timed_out": outcome.timed_out,
        "truncated": outcome.truncated,
        "seconds": round(outcome.seconds or time.monotonic() - started, 2),
    }


def _target_for(check: CheckDefinition, targets: list[CheckTarget], first_host: str) -> CheckTarget | None:
    """The machine a check runs on, by host name; the image's first host (or none named) is the first
    target, whatever the connector calls it."""
    for target in targets:
        if target.host == check.host:
            return target
    return targets[0] if not check.host or check.host == first_host else None


def _first_host(spec: dict[str, Any]) -> str:
    hosts = spec.get("hosts")
    if isinstance(hosts, list) and hosts and isinstance(hosts[0], dict):
        return str(hosts[0].get("name", ""))
    return ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _tail(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-HINT_LINES:])[-FEEDBACK_LIMIT:]


def _save_results(session: Session, attempt_id: int, results: list[dict[str, Any]]) -> None:
    """Commit the results so far (the lab page polls them)."""
    session.execute(
        update(CheckAttempt).where(CheckAttempt.id == attempt_id, CheckAttempt.state == "running").values(results=list(results))
    )
    session.commit()


def _close(session: Session, attempt_id: int, state: str, **values: Any) -> str:
    """Finish an attempt under way as "done" or "error" (compare-and-set: only from queued or running)."""
    session.execute(
        update(CheckAttempt)
        .where(CheckAttempt.id == attempt_id, CheckAttempt.state.in_(ACTIVE_ATTEMPT_STATES))
        .values(state=state, finished_at=utcnow(), **values)
    )
    session.commit()
    return state


# -- automatic checks ------------------------------------------------------------------------------------
def check_before_suspend(rt: Runtime, lab_id: int) -> int | None:
    """For an activity with `auto_check = "on_suspend"`: run the checks now, inline, while the lab's
    machines still run (the suspend job calls this before asking the backend to suspend). Once per stay
    in `running`: nothing is run when a "suspend" attempt was made since the lab last became running
    (the suspend job re-run by the deadline sweep), or while another attempt is under way (it counts).
    Returns the attempt's id, or None when nothing was run."""
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.activity.auto_check != "on_suspend":
            return None
        definitions = checks_of(lab.activity.image.spec)
        if not definitions:
            return None
        since = session.scalar(select(func.max(LabEvent.at)).where(LabEvent.lab_id == lab_id, LabEvent.to_state == S.RUNNING.value))
        earlier = select(CheckAttempt.id).where(CheckAttempt.lab_id == lab_id, CheckAttempt.trigger == "suspend")
        if since is not None:
            earlier = earlier.where(CheckAttempt.created_at >= since)
        if session.scalar(earlier.limit(1)) is not None:
            return None
        if _under_way(rt, session, lab_id) is not None:
            log.info("lab %s: an attempt is under way as it suspends; no separate suspend check", lab_id)
            return None
        attempt = _new_attempt(lab, "suspend", definitions)
        job = get_current_job()
        attempt.job_id = job.id if job else None
        session.add(attempt)
        try:
            session.commit()
        except IntegrityError:
            return None
        attempt_id = attempt.id
    run_attempt(attempt_id)
    return attempt_id


def check_due(rt: Runtime) -> int:
    """For activities with `auto_check = "at_deadline"` whose `due_at` has passed: start a "deadline"
    attempt on every running lab that has none yet (a lab launched after the deadline gets one once it
    runs). Where an attempt is already under way it is left to finish, and the next sweep starts the
    deadline attempt. Returns how many labs it queued checks for."""
    with rt.session() as session:
        has_deadline_attempt = exists().where(CheckAttempt.lab_id == Lab.id, CheckAttempt.trigger == "deadline")
        due = session.execute(
            select(Lab.id, Lab.user_id)
            .join(Activity, Lab.activity_id == Activity.id)
            .where(
                Activity.auto_check == "at_deadline",
                Activity.due_at.is_not(None),
                Activity.due_at <= utcnow(),
                Lab.state == S.RUNNING.value,
                ~has_deadline_attempt,
            )
            .order_by(Lab.id)
            .limit(rt.settings.sweep_batch)
        ).all()
    started = 0
    for lab_id, user_id in due:
        try:
            start_check(rt, user_id, lab_id, trigger="deadline")
        except (InvalidTransition, NotGradable, NotFound) as exc:  # the lab moved on, or nothing to check
            log.info("deadline check of lab %s skipped: %s", lab_id, exc)
            continue
        started += 1
    return started

