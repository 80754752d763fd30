"""Lab rows on the fake backend for broker tests that need a lab without a worker (check attempts,
take-away exports): the activity's stored spec, and a lab as a finished provision leaves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.clock import utcnow
from broker.connector import LabSpec
from broker.models import Activity, Lab, LabEvent
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector
from tests.support.world import World


def set_spec(rt: Runtime, world: World, spec: dict[str, Any]) -> None:
    """Store `spec` as the spec of the world's activity's image."""
    with rt.session() as session:
        session.get(Activity, world.activity_id).image.spec = spec
        session.commit()


def running_lab(rt: Runtime, world: World, fake_dir: Path, user_id: int | None = None, state: str = "running",
                from_state: str = "provisioning") -> int:
    """A lab row whose fake backend object exists (what a finished provision leaves), without a worker."""
    now = utcnow()
    with rt.session() as session:
        lab = Lab(user_id=user_id or world.user_id, activity_id=world.activity_id, backend_id=world.backend_id, state=state,
                  last_active_at=now, state_changed_at=now)
        session.add(lab)
        session.flush()
        lab.handle = FakeConnector("fake", {"state_dir": str(fake_dir)}).provision(LabSpec(lab.id, "img-fake", "learner-1"))
        session.add(LabEvent(lab_id=lab.id, from_state=from_state, to_state=state, reason="test", at=now))
        session.commit()
        return lab.id
