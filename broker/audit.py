"""The audit log: one `AuditEvent` row per admin action (and other actions worth a trace).

Helpers across LabDesk call `record`; its signature is a stable contract, so add keyword arguments with
defaults rather than change it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from broker.models import AuditEvent

ACTION_MAX = 64
TEXT_MAX = 255
DETAIL_MAX = 500


def record(
    session: Session,
    actor: str,
    action: str,
    *,
    target: str = "",
    detail: str = "",
    lab_id: int | None = None,
    address: str = "",
) -> AuditEvent:
    """Add one audit row to `session` (the caller commits, so the row lands with the change it describes).

    Stable signature: `actor` is who ("admin:<username>", "cli:<os user>", "user:<id>"), `action` a short
    dotted verb ("admin.sign_in", "backend.drain"), `target` what it was on when not a lab ("backend:eu-1"),
    `detail` a sentence for people, `address` the client's IP. Over-long values are cut, never refused: an
    audit row must not make the action it records fail.
    """
    event = AuditEvent(
        actor=actor[:TEXT_MAX], action=action[:ACTION_MAX], target=target[:TEXT_MAX],
        detail=detail[:DETAIL_MAX], lab_id=lab_id, address=address[:64],
    )
    session.add(event)
    return event
