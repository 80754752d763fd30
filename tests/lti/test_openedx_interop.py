"""Open edX's own LTI 1.3 consumer (lti-consumer-xblock's `LtiAdvantageConsumer`, run as a real platform
process) launches LabDesk over real HTTP and grants LabDesk's AGS token request: a platform implementation
no LabDesk code produced, so both sides of the protocol are checked against someone else's reading of it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests
from redis import Redis
from sqlalchemy import select

from app import create_app
from broker.config import Settings
from broker.models import Lab, Membership, User
from broker.runtime import Runtime
from lti import platforms
from tests.conftest import make_settings
from tests.support.world import add_lab_catalogue
from tests.support.http import LiveServer, serve
from tests.support.openedx_platform import OpenEdxPlatform, openedx_missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(openedx_missing() is not None, reason=str(openedx_missing()))]


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, port: int) -> Settings:
    return make_settings(db_url, tmp_path, public_url=f"http://127.0.0.1:{port}", default_backend="fake", emulator=False)


@pytest.fixture
def tool(rt: Runtime, port: int, tmp_path: Path) -> Iterator[LiveServer]:
    add_lab_catalogue(rt, str(tmp_path / "fake"), "linux-desktop")
    yield from serve(create_app(rt.settings, rt), port)


@pytest.fixture
def openedx(tool: LiveServer, rt: Runtime) -> Iterator[OpenEdxPlatform]:
    with OpenEdxPlatform(tool.url + "/lti/login", tool.url + "/lti/launch", tool.url + "/lti/jwks", client_id="openedx-client", deployment_id="1") as platform:
        platforms.add(
            rt, issuer=platform.issuer, client_id="openedx-client", auth_login_url=platform.auth_login_url,
            auth_token_url=platform.token_url, key_set_url=platform.jwks_url, deployments=["1"], name="Open edX",
        )
        yield platform


def test_open_edx_launches_a_learner_into_their_lab(openedx: OpenEdxPlatform, rt: Runtime) -> None:
    session = requests.Session()
    response = openedx.launch(
        session, user_id="edx-learner-1", resource_link_id="block-v1:LabDesk+Lab+2025+type@lti_consumer+block@1",
        role="student", name="Edx Learner", custom_parameters={"lab": "linux-desktop"},
    )
    assert response.status_code == 200 and "/labs/" in response.url
    auth = openedx.auth_requests()[-1]
    assert auth["redirect_uri"] == rt.settings.public_url + "/lti/launch" and auth["login_hint"] == "edx-learner-1"
    with rt.session() as db:
        user = db.scalar(select(User).where(User.issuer == openedx.issuer))
        assert user is not None and user.subject == "edx-learner-1"
        assert db.scalar(select(Membership.role).where(Membership.user_id == user.id)) == "learner"
        assert db.scalar(select(Lab.state).where(Lab.user_id == user.id)) == "requested"


def test_open_edx_staff_get_the_instructor_view(openedx: OpenEdxPlatform) -> None:
    response = openedx.launch(
        requests.Session(), user_id="edx-staff-1", resource_link_id="block-staff", role="instructor",
        custom_parameters={"lab": "linux-desktop"},
    )
    assert response.status_code == 200 and "Instructor view" in response.text


def test_open_edx_grants_labdesks_token_and_receives_the_score(openedx: OpenEdxPlatform, rt: Runtime) -> None:
    from broker.scores import record_score
    from broker.models import ScoreOutbox
    from lti.outbox import deliver

    response = openedx.launch(requests.Session(), user_id="edx-learner-2", resource_link_id="block-graded", role="student",
                              custom_parameters={"lab": "linux-desktop"})
    assert response.status_code == 200
    with rt.session() as db:
        lab = db.scalar(select(Lab))
        assert lab is not None
    outbox_id = record_score(rt, lab.activity_id, lab.user_id, 7, 10, "Completed", "FullyGraded", "3 of 4 checks passed")
    deliver(outbox_id)
    token = openedx.token_requests()[-1]
    assert token["status"] == 200 and "https://purl.imsglobal.org/spec/lti-ags/scope/score" in token["granted_scope"]
    received = openedx.scores()[-1]["score"]
    assert received["userId"] == "edx-learner-2" and received["scoreGiven"] == 7 and received["scoreMaximum"] == 10
    assert received["activityProgress"] == "Completed" and received["gradingProgress"] == "FullyGraded"
    with rt.session() as db:
        row = db.get(ScoreOutbox, outbox_id)
        assert row is not None and row.state == "sent" and row.payload["timestamp"] == received["timestamp"]


def test_a_check_of_the_learners_lab_reaches_open_edx_as_their_score(openedx: OpenEdxPlatform, rt: Runtime, tmp_path: Path) -> None:
    """Check my work, end to end into Open edX's consumer: the learner's lab runs (fake backend), its
    check runs for real through the local grading hook against the lab's files, and the grade outbox
    delivers the attempt's score to the platform's AGS endpoint."""
    from broker import attempts, jobs
    from broker.models import Image, ScoreOutbox
    from lti.outbox import deliver

    with rt.session() as db:  # the catalogue entry's check, as an imported image version embeds it
        image = db.scalar(select(Image).where(Image.slug == "linux-desktop"))
        image.spec = {"lab_user": {"name": "learner"}, "max_score": 10, "checks": [{
            "id": "hello-file", "title": "Create ~/hello.txt", "weight": 1, "hint": "Write a line into ~/hello.txt.",
            "script": (Path(__file__).resolve().parents[2] / "desktop-images/checks/hello-file.sh").read_text(),
        }]}
        db.commit()
    response = openedx.launch(requests.Session(), user_id="edx-learner-3", resource_link_id="block-checked", role="student",
                              custom_parameters={"lab": "linux-desktop"})
    assert response.status_code == 200
    with rt.session() as db:
        lab = db.scalar(select(Lab))
    for _ in range(20):  # the worker's job, run inline until the lab runs
        jobs.advance_lab(lab.id, lab.state, 0)
        with rt.session() as db:
            lab = db.get(Lab, lab.id)
        if lab.state == "running":
            break
    assert lab.state == "running", lab.message
    (tmp_path / "fake" / "hello.txt").write_text("hello from the lab\n")  # the learner's work, in the lab's HOME

    attempt_id = attempts.start_check(rt, lab.user_id, lab.id)
    assert attempts.run_attempt(attempt_id) == "done"
    with rt.session() as db:
        [row] = db.scalars(select(ScoreOutbox)).all()
    deliver(row.id)

    received = openedx.scores()[-1]["score"]
    assert received["userId"] == "edx-learner-3"
    assert (received["scoreGiven"], received["scoreMaximum"]) == (10, 10)
    assert (received["activityProgress"], received["gradingProgress"]) == ("Completed", "FullyGraded")
    assert received["comment"] == "1 of 1 check passed"
