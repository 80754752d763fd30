"""/admin/jobs: what went wrong in the background. rq jobs that failed (an exception LabDesk did not
expect, so a bug, an outage or a misconfiguration) with their reason and a Retry button, and labs in
state `failed` with the reason their failing event recorded (broker.failed_jobs).

With Redis unreachable the page still answers: the failed labs (from the database) and a notice that the
job list is unavailable; a Retry then says why nothing was retried.

Retry is a POST (CSRF-checked, admins only) that requeues the very job; broker.failed_jobs.retry audits
it as `actor()`. It redirects back with the outcome carried in the session, so a reload retries nothing.
"""

from __future__ import annotations

from flask import flash, get_flashed_messages, redirect, render_template, request, url_for

from broker import failed_jobs
from web.admin.auth import actor, admin, admin_required, client_address, current_admin
from web.context import rt

SHOWN = 200  # of each list; rq keeps failed jobs for a week, so more than this is an incident, not a list
RESULT_CATEGORY = "job-result"
UNAVAILABLE_CATEGORY = "job-unavailable"  # shown as an alert: nothing could be done


@admin.get("/jobs")
@admin_required
def jobs():  # type: ignore[no-untyped-def]
    with rt().session() as db:
        labs = failed_jobs.failed_labs(db, limit=SHOWN)
    try:
        listed, unavailable = failed_jobs.failed_jobs(rt(), limit=SHOWN), ""
    except failed_jobs.JobsUnavailable as exc:
        listed, unavailable = [], str(exc)
    return render_template(
        "admin/jobs.html", jobs=listed, jobs_unavailable=unavailable, labs=labs, shown=SHOWN,
        results=get_flashed_messages(with_categories=True, category_filter=[RESULT_CATEGORY, UNAVAILABLE_CATEGORY]),
        unavailable_category=UNAVAILABLE_CATEGORY, admin=current_admin(),
    )


@admin.post("/jobs/retry")
@admin_required
def jobs_retry():  # type: ignore[no-untyped-def]
    job_id = request.form.get("job_id", "").strip()
    try:
        retried = failed_jobs.retry(rt(), job_id, actor(), client_address())
    except failed_jobs.JobNotFound as exc:
        flash(f"Not retried: {exc}.", RESULT_CATEGORY)
    except failed_jobs.JobsUnavailable as exc:
        flash(f"Not retried: the job queue is unavailable because {exc}. Try again once Redis is back.", UNAVAILABLE_CATEGORY)
    else:
        flash(f"Job {retried.job_id} is back on {retried.queue}; a worker will run it again.", RESULT_CATEGORY)
    return redirect(url_for("admin.jobs"))
