"""An LTI launch (the built-in emulator over real HTTP: login, auth, signed id_token) into an activity whose
backend an admin disabled: the learner reads why in the LMS frame and no lab is made; once the backend is
enabled again the same launch lands in the lab."""

from __future__ import annotations

import html

from sqlalchemy import func, select

from broker import backend_ops, services
from broker.models import Lab
from broker.runtime import Runtime
from tests.lti.test_emulator_flow import launch_from_emulator, lms, settings  # noqa: F401  (fixtures)
from tests.support.http import LiveServer


def test_a_launch_into_a_disabled_backend_is_refused_with_a_message_for_the_learner(
    lms: LiveServer, rt: Runtime  # noqa: F811
) -> None:
    with rt.session() as db:
        backend_ops.set_enabled(db, "fake", False, "admin:ann")
    refused = launch_from_emulator(rt, "emu-learner-1")
    assert refused.status_code == 403
    assert "<h1>This lab cannot open now</h1>" in refused.text
    assert services.BACKEND_DISABLED in html.unescape(refused.text)
    with rt.session() as db:
        assert db.scalar(select(func.count()).select_from(Lab)) == 0

    with rt.session() as db:
        backend_ops.set_enabled(db, "fake", True, "admin:ann")
    landed = launch_from_emulator(rt, "emu-learner-1")
    assert landed.status_code == 200 and "/labs/" in landed.url
