"""The database schema as typed SQLAlchemy 2.0 models.

Times are naive UTC everywhere (SQLite keeps no zone); `broker.clock.utcnow` makes them.
A learner has at most one *live* lab per activity, enforced by a partial unique index, so a
double-clicked launch can never create two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from broker.clock import utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# States in which a lab no longer counts as the learner's lab for its activity.
ENDED_STATES = ("failed", "deleting", "deleted")
_LIVE = text("state NOT IN ('failed', 'deleting', 'deleted')")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class User(Base):
    """A person, as identified by an LMS (issuer + subject) or the development sign-in."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Course(Base):
    """An LMS context (course) in which activities are placed."""

    __tablename__ = "courses"
    __table_args__ = (UniqueConstraint("issuer", "context_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    context_id: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Backend(Base):
    """A registered connector instance. `secrets` holds its credentials, encrypted (see broker.secrets)."""

    __tablename__ = "backends"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets: Mapped[bytes | None] = mapped_column(LargeBinary)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    capacity: Mapped[int | None] = mapped_column(default=None)  # labs at once set by an admin; None: the backend's own
    draining: Mapped[bool] = mapped_column(default=False)  # takes no new labs; running ones finish their life
    hourly_price: Mapped[float | None] = mapped_column(default=None)  # per running lab-hour, for the cost view
    suspended_hourly_price: Mapped[float | None] = mapped_column(default=None)  # per suspended lab-hour

    @property
    def queue_name(self) -> str:
        """Each backend has its own queue, so a slow cloud never delays labs on another backend."""
        return f"labdesk-backend-{self.name}"


class Image(Base):
    """A catalogue entry: what a lab looks like, per backend. Versions are kept side by side."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("slug", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(default=1)
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    protocol: Mapped[str] = mapped_column(String(16), default="vnc")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # sha256 of the normalized entry (broker.images): an import whose digest equals the newest version's
    # changes nothing. None for images written before the catalogue existed.
    digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Activity(Base):
    """A lab definition placed in a course (an LTI resource link), with its idle economics."""

    __tablename__ = "activities"
    __table_args__ = (UniqueConstraint("course_id", "resource_link_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    resource_link_id: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    backend_id: Mapped[int] = mapped_column(ForeignKey("backends.id"))
    idle_suspend_after: Mapped[int] = mapped_column(default=120)
    keepalive_interval: Mapped[int] = mapped_column(default=30)
    reap_after_days: Mapped[int] = mapped_column(default=14)
    # Grading (broker.attempts): which attempt's score the gradebook gets ("latest", "best",
    # "first_passing"), when checks run by themselves ("none", "on_suspend", "at_deadline"), the
    # deadline, and exam mode (learners see no results before `hide_results_until`).
    grading_policy: Mapped[str] = mapped_column(String(16), default="latest", server_default="latest")
    auto_check: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    due_at: Mapped[datetime | None] = mapped_column()
    hide_results_until: Mapped[datetime | None] = mapped_column()
    # Limits an instructor sets (broker.usage_limits, broker.trust): running lab-hours a learner may use per
    # week (None: no limit), and the trust level a learner must have earned in the course to start it.
    weekly_hours_limit: Mapped[float | None] = mapped_column(default=None)
    min_trust_level: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    course: Mapped[Course] = relationship()
    image: Mapped[Image] = relationship()
    backend: Mapped[Backend] = relationship()


class ClassSession(Base):
    """A scheduled class meeting of an activity: `lead_minutes` before `starts_at`, up to `warm_pool` of the
    course's learners get their lab started, so it is ready when they arrive (broker.class_schedule)."""

    __tablename__ = "class_sessions"
    __table_args__ = (Index("ix_class_sessions_starts_at", "starts_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"))
    starts_at: Mapped[datetime] = mapped_column()
    duration_minutes: Mapped[int] = mapped_column(default=90)
    lead_minutes: Mapped[int] = mapped_column(default=10)
    warm_pool: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    warmed_at: Mapped[datetime | None] = mapped_column(default=None)  # when its labs were started
    warmed_count: Mapped[int] = mapped_column(default=0)

    activity: Mapped[Activity] = relationship()


class Lab(Base):
    """One learner's lab for one activity, and where it is in its life (see broker.lifecycle)."""

    __tablename__ = "labs"
    __table_args__ = (
        Index("uq_labs_live", "user_id", "activity_id", unique=True, postgresql_where=_LIVE, sqlite_where=_LIVE),
        Index("ix_labs_state_idle_deadline", "state", "idle_deadline"),
        Index("ix_labs_state_deadline", "state", "deadline"),
        Index("ix_labs_state_last_active_at", "state", "last_active_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"))
    backend_id: Mapped[int] = mapped_column(ForeignKey("backends.id"))
    state: Mapped[str] = mapped_column(String(16), default="requested")
    handle: Mapped[dict[str, Any] | None] = mapped_column()
    progress: Mapped[int] = mapped_column(default=0)
    message: Mapped[str] = mapped_column(String(500), default="")
    deadline: Mapped[datetime | None] = mapped_column()
    backend_call: Mapped[str | None] = mapped_column(String(16))
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    gone_since: Mapped[datetime | None] = mapped_column()
    last_active_at: Mapped[datetime] = mapped_column(default=utcnow)
    idle_deadline: Mapped[datetime | None] = mapped_column()
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where guacd reaches the running lab, credentials included: sealed by the vault (broker.endpoints).
    endpoints: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Why a lab waits in `requested`/`provisioning` beyond the usual: "capacity" when its backend is full.
    waiting_for: Mapped[str | None] = mapped_column(String(16))
    # The class session that started this lab before its learner came (broker.class_schedule); None once
    # the learner has used it, or when the learner started it.
    prewarmed_by: Mapped[int | None] = mapped_column(ForeignKey("class_sessions.id"), default=None)

    user: Mapped[User] = relationship()
    activity: Mapped[Activity] = relationship()
    backend: Mapped[Backend] = relationship()


class LabEvent(Base):
    """Append-only audit of every state change: who moved the lab, why, from which job."""

    __tablename__ = "lab_events"
    __table_args__ = (Index("ix_lab_events_lab_id_at", "lab_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("labs.id"))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500), default="")
    actor: Mapped[str] = mapped_column(String(255), default="system")
    job_id: Mapped[str | None] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what, beyond state changes: an instructor watching a learner's desktop, every admin action.

    `target` names what an action was on when it is not a lab ("backend:eu-1", "platform:3"); `address`
    is the client's IP address for actions taken in a browser."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_lab_id_at", "lab_id", "at"), Index("ix_audit_events_at", "at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int | None] = mapped_column(ForeignKey("labs.id"))
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(500), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)
    target: Mapped[str] = mapped_column(String(255), default="")
    address: Mapped[str] = mapped_column(String(64), default="")


class Admin(Base):
    """Someone who may use the admin console: signed in by the institution's OpenID Connect provider
    (`issuer` + `subject`), or a local bootstrap account with a password (`labdesk admins add`)."""

    __tablename__ = "admins"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)  # local accounts only
    issuer: Mapped[str | None] = mapped_column(String(255), default=None)  # OIDC accounts only
    subject: Mapped[str | None] = mapped_column(String(255), default=None)
    email: Mapped[str] = mapped_column(String(255), default="")
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(default=None)


class Membership(Base):
    """A user's role in a course as their LMS last stated it at launch; the instructor view lists these."""

    __tablename__ = "course_members"
    __table_args__ = (UniqueConstraint("course_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))  # "learner" or "instructor"
    test_user: Mapped[bool] = mapped_column(default=False)
    last_launch_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship()


class ScoreOutbox(Base):
    """A score on its way to the LMS gradebook. Written before any delivery is tried, so an LMS outage
    loses nothing; a retry resends `payload` unchanged, timestamp included."""

    __tablename__ = "score_outbox"
    __table_args__ = (Index("ix_score_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    payload: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


# Attempts still under way: at most one per lab (a partial unique index, like live labs).
ACTIVE_ATTEMPT_STATES = ("queued", "running")
_ACTIVE_ATTEMPT = text("state IN ('queued', 'running')")


class CheckAttempt(Base):
    """One run of an activity's checks on a learner's lab, with each check's result (broker.attempts).

    `results` holds one dict per check, in order: id, title, host, weight, state ("pending", "running",
    "passed", "failed", "error"), feedback, hint, timed_out, truncated, seconds. It is committed after
    every check, so the lab page shows progress. `error` is a message safe to show when the whole
    attempt could not run.
    """

    __tablename__ = "check_attempts"
    __table_args__ = (
        Index("ix_check_attempts_activity_user_created", "activity_id", "user_id", "created_at"),
        Index("ix_check_attempts_lab_id_created_at", "lab_id", "created_at"),
        Index("uq_check_attempts_active", "lab_id", unique=True, postgresql_where=_ACTIVE_ATTEMPT, sqlite_where=_ACTIVE_ATTEMPT),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("labs.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"))
    trigger: Mapped[str] = mapped_column(String(16), default="learner")  # learner, suspend, deadline, instructor
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, error
    # The rq job that runs it ("check-<id>", or the suspend job for an automatic check on suspend), so an
    # attempt whose job died can be told from one still waiting.
    job_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    score_given: Mapped[float | None] = mapped_column(Float)
    score_maximum: Mapped[float | None] = mapped_column(Float)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(String(500), default="")

    lab: Mapped[Lab] = relationship()
    user: Mapped[User] = relationship()
    activity: Mapped[Activity] = relationship()


class GpuSlot(Base):
    """One GPU unit of a backend (`broker.connector.GpuUnit`) as last inventoried, and the lab holding it.

    `lab_id` is the only holder column and it is unique, so one unit never has two labs and one lab never
    holds two units; taking a unit is a compare-and-set UPDATE (`broker.gpus`). A unit missing from the
    latest inventory stays, `present = False`, until its holder lets it go: it is never handed out again.
    """

    __tablename__ = "gpu_slots"
    __table_args__ = (UniqueConstraint("backend_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    backend_id: Mapped[int] = mapped_column(ForeignKey("backends.id"))
    key: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8), default="pci")
    address: Mapped[str] = mapped_column(String(64), default="")
    mdev_type: Mapped[str] = mapped_column(String(64), default="")
    parent: Mapped[str] = mapped_column(String(255), default="")
    present: Mapped[bool] = mapped_column(default=True)
    lab_id: Mapped[int | None] = mapped_column(ForeignKey("labs.id"), unique=True)
    held_since: Mapped[datetime | None] = mapped_column()
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


_OPEN_REQUEST = text("released_at IS NULL")


class GpuRequest(Base):
    """A lab's turn for a GPU: waiting (`granted_at` is None), holding (granted, not released), or history.

    At most one open request per lab (a partial unique index). Released rows stay: their durations give
    the queue's wait estimates, and the bench its fairness figures.
    """

    __tablename__ = "gpu_requests"
    __table_args__ = (
        Index("uq_gpu_requests_open", "lab_id", unique=True, postgresql_where=_OPEN_REQUEST, sqlite_where=_OPEN_REQUEST),
        Index("ix_gpu_requests_backend_released", "backend_id", "released_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("labs.id"))
    backend_id: Mapped[int] = mapped_column(ForeignKey("backends.id"))
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    model: Mapped[str] = mapped_column(String(64), default="")  # "" takes any GPU
    previous_key: Mapped[str] = mapped_column(String(255), default="")  # the unit it held before a suspend
    slot_key: Mapped[str] = mapped_column(String(255), default="")
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    granted_at: Mapped[datetime | None] = mapped_column()
    released_at: Mapped[datetime | None] = mapped_column()


# A take-away export still being built: at most one per lab (a partial unique index, like attempts).
_PENDING_EXPORT = text("state = 'pending'")


class LabExport(Base):
    """A learner's take-away bundle of a lab (broker.takeaway): the zip to run the lab with `vagrant up`.

    `archive` holds the finished zip, so the download needs no backend; only the lab's newest ready
    export keeps its bytes (older ones are emptied when a newer one is ready). `message` is safe to show
    to the learner: why it failed, or a note (an empty work folder).
    """

    __tablename__ = "lab_exports"
    __table_args__ = (
        Index("ix_lab_exports_lab_id_created_at", "lab_id", "created_at"),
        Index("uq_lab_exports_pending", "lab_id", unique=True, postgresql_where=_PENDING_EXPORT, sqlite_where=_PENDING_EXPORT),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("labs.id"))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, ready, failed
    # The rq job reading the work folder ("takeaway-<id>"), so an export whose job died can be told from
    # one still waiting; None when the bundle was built at once (no work folder).
    job_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    size: Mapped[int | None] = mapped_column(Integer)
    archive: Mapped[bytes | None] = mapped_column(LargeBinary)
    message: Mapped[str] = mapped_column(String(500), default="")

    lab: Mapped[Lab] = relationship()
