"""LTI 1.3 tables: the platforms (LMSs) that may launch LabDesk, their deployments, the tool's own signing
keys, and the LMS service endpoints remembered per activity.

They share `broker.models.Base`, so one Alembic history covers the whole schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from broker.clock import utcnow
from broker.models import Base


class Platform(Base):
    """One LMS registration: an issuer and the client id it gave LabDesk (one issuer may have several)."""

    __tablename__ = "lti_platforms"
    __table_args__ = (UniqueConstraint("issuer", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    client_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255), default="")
    auth_login_url: Mapped[str] = mapped_column(String(1024))
    auth_token_url: Mapped[str] = mapped_column(String(1024))
    key_set_url: Mapped[str] = mapped_column(String(1024))
    auth_audience: Mapped[str] = mapped_column(String(1024), default="")  # token `aud` if not the token URL
    accept_new_deployments: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    deployments: Mapped[list["Deployment"]] = relationship(back_populates="platform", cascade="all, delete-orphan")


class Deployment(Base):
    """A deployment id the platform may launch with (an LMS makes one per tool installation)."""

    __tablename__ = "lti_deployments"
    __table_args__ = (UniqueConstraint("platform_id", "deployment_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("lti_platforms.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    platform: Mapped[Platform] = relationship(back_populates="deployments")


class ToolKey(Base):
    """An RSA key LabDesk signs with (deep-linking responses, service token assertions).

    `status` is "next" (published, not yet used), "current" (signs), or "previous" (published until the
    following rotation, so platforms holding a cached JWKS keep verifying). The private key is sealed.
    """

    __tablename__ = "lti_keys"
    # One current and one next key, even when two processes create them at the same moment.
    __table_args__ = (
        Index(
            "uq_lti_keys_active_status", "status", unique=True,
            sqlite_where=text("status IN ('current', 'next')"), postgresql_where=text("status IN ('current', 'next')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LinkServices(Base):
    """What the LMS said at the last launch of an activity about its grade and roster services."""

    __tablename__ = "lti_link_services"

    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"), primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("lti_platforms.id", ondelete="CASCADE"))
    lineitem_url: Mapped[str] = mapped_column(String(1024), default="")
    lineitems_url: Mapped[str] = mapped_column(String(1024), default="")
    ags_scopes: Mapped[list[str]] = mapped_column(default=list)
    memberships_url: Mapped[str] = mapped_column(String(1024), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    platform: Mapped[Platform] = relationship()
