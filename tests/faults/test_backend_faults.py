"""A cloud API that answers 5xx, hangs, or loses the answer to a create, between real `labdesk worker`
processes and a real Heat engine (tests/support/heat.py), through the fault proxy (tests/support/fault_proxy.py).

After each fault: the lab reaches the state the learner asked for once Heat recovers, or fails with a
readable message once its retries are spent; during the fault the learner's lab page and API say the cloud
is not answering; the Heat API received exactly one create per lab; after the reconciler (a 1 s orphan
grace) no stack is left that no lab owns; and the deadline sweep finds no lab stuck in progress.
Figures (retries, seconds from recovery to the wanted state) are printed: run with -s to read them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from app import create_app
from broker import schedule
from broker.config import Settings
from broker.jobs import GAVE_UP
from broker.lifecycle import LabState
from broker.models import Activity, Backend
from broker.runtime import Runtime
from connectors.heat.errors import BUSY
from tests.conftest import make_settings
from tests.support.fault_proxy import FaultProxy
from tests.support.heat import backend_config, heat_client, heat_endpoints, heat_entry, provider
from tests.support.http import Learner, LiveServer, serve
from tests.support.waiting import lab_row, wait_state, wait_until
from tests.support.workers import WorkerPool
from tests.support.world import make_world

pytestmark = [pytest.mark.heat, pytest.mark.postgres, pytest.mark.slow]
S = LabState
CREATE = r"/stacks$"  # POST …/v1/admin/stacks: a stack create


@pytest.fixture
def heat() -> str:
    return heat_endpoints(1)[0]


@pytest.fixture
def proxy(heat: str) -> Iterator[FaultProxy]:
    found = FaultProxy(heat)
    yield found
    found.close()


@pytest.fixture
def settings(pg_only: str, tmp_path: Path, redis_client: Any) -> Settings:
    return make_settings(pg_only, tmp_path, orphan_grace=1, provisioning_deadline=120, suspending_deadline=60)


@pytest.fixture
def server(rt: Runtime) -> Iterator[LiveServer]:
    yield from serve(create_app(rt.settings, rt))


class Course:
    """A Heat activity behind the proxy, and a learner signed in to the live app."""

    def __init__(self, rt: Runtime, heat: str, proxy: FaultProxy, server: LiveServer, **backend: Any) -> None:
        config = backend_config([provider(proxy.url + "/v1/admin", "cloud-a")], call_timeout=2, **backend)
        seed = config.pop("credential_seed")
        self.world = make_world(rt, kind="heat", config=config, backend_name="heat", idle_suspend_after=1)
        with rt.session() as session:
            session.get(Backend, self.world.backend_id).secrets = rt.vault.seal({"credential_seed": seed})
            image = session.get(Activity, self.world.activity_id).image
            image.spec, image.protocol = heat_entry(), "ssh"
            session.commit()
        self.rt, self.heat, self.proxy, self.prefix = rt, heat, proxy, config["name_prefix"]
        self.learner = Learner(server.url)
        assert self.learner.sign_in("ada").status_code == 200

    def launch(self) -> int:
        """The learner presses "Open lab"; the lab page's id."""
        response = self.learner.launch(self.world.activity_id)
        assert response.status_code == 200, response.text
        return self.learner.lab_id(response)

    def seen_by_learner(self, lab_id: int) -> tuple[dict[str, Any], str]:
        """What the lab page's status API answers, and the lab page itself."""
        return self.learner.get(f"/api/labs/{lab_id}").json(), self.learner.get(f"/labs/{lab_id}").text

    def stacks(self, lab_id: int) -> list[Any]:
        """The lab's stacks as Heat itself lists them (straight to Heat, not through the proxy)."""
        tag = f"{self.prefix}-lab-{lab_id}"
        return [s for s in heat_client(self.heat).stacks.list(tags=tag) if s.stack_status not in ("DELETE_COMPLETE", "DELETE_IN_PROGRESS")]

    def all_stacks(self) -> list[Any]:
        return [s for s in heat_client(self.heat).stacks.list(tags=self.prefix) if s.stack_status not in ("DELETE_COMPLETE", "DELETE_IN_PROGRESS")]

    def creates(self) -> int:
        """Stack creates that reached Heat."""
        return len(self.proxy.forwarded("POST", CREATE))

    def no_orphans_after_reconciling(self, lab_id: int) -> None:
        """The reconciler twice, past the 1 s grace, deletes nothing: the only stack Heat holds is the lab's."""
        first = schedule.reconcile_backend(self.rt, self.world.backend_id)
        time.sleep(1.2)
        second = schedule.reconcile_backend(self.rt, self.world.backend_id)
        assert (first, second) == ({"orphans_deleted": 0, "vanished": 0},) * 2
        assert [s.id for s in self.all_stacks()] == [lab_row(self.rt, lab_id).handle["stack_id"]]

    def nothing_overdue(self) -> None:
        assert schedule.expire_stuck(self.rt) == 0


@pytest.fixture
def course(rt: Runtime, heat: str, proxy: FaultProxy, server: LiveServer) -> Course:
    return Course(rt, heat, proxy, server)


def test_heat_answering_503_while_a_lab_is_created_then_recovering(course: Course, workers: WorkerPool) -> None:
    course.proxy.fail(503)  # every call: the API behind a load balancer with no healthy member
    workers.start(2)
    lab_id = course.launch()

    wait_until(lambda: len(course.proxy.faulted()) >= 2, timeout=60, what="two attempts answered 503")
    api, page = course.seen_by_learner(lab_id)
    assert (api["state"], api["message"]) == ("provisioning", BUSY)
    assert BUSY in page
    course.proxy.fail(500, body="html")  # the other kind of 5xx: an HTML error page
    wait_until(lambda: course.proxy.requests()[-1].status == 500, timeout=60, what="an attempt answered 500")
    failed_calls = len(course.proxy.faulted())

    course.proxy.pass_through()
    recovered = time.monotonic()
    running = wait_state(course.rt, lab_id, S.RUNNING, timeout=60)
    print(f"\n503/500 while creating: {failed_calls} calls refused; running {time.monotonic() - recovered:.1f} s after recovery")

    [stack] = course.stacks(lab_id)
    assert running.handle["stack_id"] == stack.id and course.creates() == 1
    assert course.seen_by_learner(lab_id)[0]["message"] == ""
    course.no_orphans_after_reconciling(lab_id)
    course.nothing_overdue()


def test_heat_answering_503_for_longer_than_the_retries_fails_the_lab_with_a_readable_message(
    rt: Runtime, heat: str, proxy: FaultProxy, server: LiveServer, workers: WorkerPool
) -> None:
    rt.settings = dataclasses.replace(rt.settings, max_transient_retries=2)
    workers.settings = rt.settings
    course = Course(rt, heat, proxy, server)
    proxy.fail(503)
    workers.start(1)
    lab_id = course.launch()

    failed = wait_state(rt, lab_id, S.FAILED, timeout=60)
    api, page = course.seen_by_learner(lab_id)
    print(f"\n503 for good: failed after {len(proxy.faulted())} refused calls")
    assert api["state"] == "failed" and api["message"] == failed.message == GAVE_UP
    assert GAVE_UP in page and "keeps trying" not in page
    assert proxy.forwarded() == [] and course.all_stacks() == []
    course.nothing_overdue()


def test_heat_hanging_while_a_lab_is_suspended_then_recovering(course: Course, workers: WorkerPool) -> None:
    workers.start(1)  # one worker: each retry below proves the hang did not keep it
    lab_id = course.launch()
    wait_state(course.rt, lab_id, S.RUNNING)
    time.sleep(1.5)  # idle past the activity's idle_suspend_after (1 s)
    course.proxy.hang()

    assert schedule.suspend_idle(course.rt) == 1
    wait_until(lambda: lab_row(course.rt, lab_id).message == BUSY, timeout=30, what="the first call to time out (2 s)")
    wait_until(lambda: len(course.proxy.faulted()) >= 2, timeout=30, what="a second call, by the same worker")
    api, page = course.seen_by_learner(lab_id)
    assert (api["state"], api["message"]) == ("suspending", BUSY)
    assert BUSY in page
    hung = len(course.proxy.faulted())

    course.proxy.pass_through()
    recovered = time.monotonic()
    wait_state(course.rt, lab_id, S.SUSPENDED, timeout=60)
    print(f"\nHeat hanging while suspending: {hung} calls hung; suspended {time.monotonic() - recovered:.1f} s after recovery")

    [stack] = course.stacks(lab_id)
    assert stack.stack_status == "SUSPEND_COMPLETE"
    suspends = [r for r in course.proxy.forwarded("POST", r"/actions$") if r.status == 200]  # not Heat's 302 to the stack's full URL
    assert [r.json() for r in suspends] == [{"suspend": None}] and course.creates() == 1
    course.no_orphans_after_reconciling(lab_id)
    course.nothing_overdue()


@pytest.mark.parametrize("answer", [502, None], ids=["answered-502", "connection-dropped"])
def test_a_create_whose_answer_is_lost_makes_one_stack_and_the_lab_runs(course: Course, workers: WorkerPool, answer: int | None) -> None:
    course.proxy.lose_answer(answer, method="POST", path=CREATE, times=1)  # Heat creates it; LabDesk never hears
    workers.start(2)
    lab_id = course.launch()

    running = wait_state(course.rt, lab_id, S.RUNNING, timeout=60)
    lost = course.proxy.requests("POST", CREATE)[0]
    assert (lost.fault, lost.forwarded) == ("lose_answer", True)
    [stack] = course.stacks(lab_id)
    assert running.handle["stack_id"] == stack.id
    assert course.creates() == 1  # the stack the lost answer made was adopted, not made again
    course.no_orphans_after_reconciling(lab_id)
    course.nothing_overdue()
