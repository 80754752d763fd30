"""What a connection token may open, decided again at the tunnel from the database.

The web checked the same when it minted the token, but a minute may have passed: the lab may have been
suspended or deleted, or the instructor's role withdrawn. Host, port, protocol and credentials come
from the lab's sealed endpoints here, never from the browser.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker import endpoints, services
from broker.connector import DesktopEndpoint
from broker.models import AuditEvent, Lab, User
from broker.runtime import Runtime
from broker.tunnel_tokens import Grant, Refused

NOT_FOUND, FORBIDDEN, CONFLICT = 0x0204, 0x0303, 0x0205


class AccessRefused(Refused):
    """The lab may not be opened now, or not by this person."""


@dataclass(frozen=True)
class Target:
    """One session to open: whose lab, which endpoint, as whom, and whether read-only."""

    lab_id: int
    endpoint: DesktopEndpoint
    viewer_name: str
    read_only: bool
    watch: bool


def resolve(rt: Runtime, grant: Grant) -> Target:
    """The endpoint `grant` opens, or AccessRefused saying why not."""
    with rt.session() as session:
        lab = session.get(Lab, grant.lab_id)
        if lab is None or lab.state in ("deleting", "deleted"):
            raise AccessRefused("This lab no longer exists. Reload the page to start a new one.", NOT_FOUND)
        if grant.watch:
            _require_instructor(session, lab, grant.user_id)
        elif lab.user_id != grant.user_id:
            raise AccessRefused("This desktop belongs to someone else.", FORBIDDEN)
        if lab.state != "running":
            raise AccessRefused(f"The lab is {lab.state}, not running. Reload the page.", CONFLICT)
        endpoint = endpoints.find(endpoints.unseal(rt.vault, lab.endpoints), grant.host)
        if endpoint is None:
            raise AccessRefused(f"This lab has no machine called {grant.host!r}.", NOT_FOUND)
        viewer = session.get(User, grant.user_id)
        name = viewer.name if viewer else ""
        return Target(lab.id, endpoint, name, grant.read_only or grant.watch, grant.watch)


def _require_instructor(session, lab: Lab, user_id: int) -> None:  # type: ignore[no-untyped-def]
    if not services.is_instructor(session, lab.activity.course_id, user_id):
        raise AccessRefused("Only the course's instructors may watch a learner's desktop.", FORBIDDEN)


def audit(rt: Runtime, lab_id: int, user_id: int, action: str, detail: str) -> None:
    """Record who watched whose desktop, and when they stopped."""
    with rt.session() as session:
        session.add(AuditEvent(lab_id=lab_id, actor=f"user:{user_id}", action=action, detail=detail[:500]))
        session.commit()
