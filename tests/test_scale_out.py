"""Scale-out on one machine: the same class's day (tests/support/scale_scenario.py) on one web, tunnel,
worker and scheduler process, then on 3 web, 2 tunnel, 4 worker and 2 scheduler processes, all real
(gunicorn, `labdesk tunnel`, `labdesk worker`, `labdesk scheduler`) on one PostgreSQL database and one
Redis db. The learners and the admin see the same results; no job reaches the backend twice, although
two schedulers enqueue every sweep; no lab is lost, and no backend object is left behind. And two
reconciler passes at once (what two schedulers can cause) delete an orphan once.

The day is 12 learners here, to keep the suite short; bench/scale_out.py runs it for 40 and prints labs
per minute for each shape.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis

from broker import schedule
from broker.connector import LabSpec
from broker.models import Backend
from broker.runtime import Runtime
from broker.testing.fake import FakeConnector, read_call_log
from tests.conftest import make_settings
from tests.lti.signing_platform import SigningPlatform
from tests.support import scale_scenario
from tests.support.guacd_double import GuacdDouble
from tests.support.scale_scenario import Outcome
from tests.support.services import create_pg_database, drop_pg_database, require_postgres
from tests.support.stack import Shape
from tests.support.world import World

pytestmark = pytest.mark.postgres
LEARNERS = 12
ONE_OF_EACH = Shape(web=1, tunnel=1, workers=1, schedulers=1)
SCALED_OUT = Shape(web=3, tunnel=2, workers=4, schedulers=2)
# What each learner's labs went through: learner n mod 4 == 0 came back, == 1 reset, the others stayed away.
FIRST = ["requested", "provisioning", "running", "suspending", "suspended"]
PATHS = {
    0: [FIRST + ["resuming", "running", "deleting", "deleted"]],
    1: [FIRST + ["deleting", "deleted"], ["requested", "provisioning", "running", "deleting", "deleted"]],
    2: [FIRST + ["deleting", "deleted"]],
    3: [FIRST + ["deleting", "deleted"]],
}


@pytest.fixture
def lms() -> Iterator[SigningPlatform]:
    platform = SigningPlatform(client_id="scale-client", deployment_id="scale-deployment")
    yield platform
    platform.close()


@pytest.fixture
def guacd() -> Iterator[GuacdDouble]:
    with GuacdDouble(sync_interval=0.5) as double:
        yield double


def day_on(shape: Shape, work: Path, redis: Redis, lms: SigningPlatform, guacd: GuacdDouble) -> Outcome:
    database = create_pg_database()
    try:
        outcome = scale_scenario.day(shape, work, make_settings, redis, lms, guacd, LEARNERS, database)
    finally:
        drop_pg_database(database)
    print(f"\n{shape}: {outcome.seconds:.1f} s, {len(outcome.labs_asked)} labs, {outcome.jobs()} jobs, "
          f"{len(outcome.calls)} backend calls; {outcome.figures}")
    return outcome


def check_alone(outcome: Outcome) -> None:
    """What any one run must show, whatever its shape."""
    assert outcome.doubled() == [], "no job or sweep did its work twice"
    assert sorted(op for op, *_ in outcome.calls if op == "suspend") == ["suspend"] * LEARNERS, "one suspend per learner who left"
    assert outcome.lost() == set(), "every lab asked for ran and was deleted, and no other lab exists"
    assert outcome.left_on_backend == [] and outcome.reconciled == {"orphans_deleted": 0, "vanished": 0}
    assert outcome.tunnel_sessions == LEARNERS, "each learner's key press reached guacd through a tunnel process"
    assert len(outcome.learners) == LEARNERS
    for subject, seen in outcome.learners.items():
        index = int(subject.rsplit("-", 1)[1])
        assert [lab["path"] for lab in seen["labs"]] == PATHS[index % 4], subject
        assert seen["scores"] == [("done", 5.0)], f"{subject}: one check; one of its two checks passed"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_several_processes_of_each_kind_give_the_same_results_as_one_of_each(
    tmp_path: Path, redis_client: Redis, lms: SigningPlatform, guacd: GuacdDouble
) -> None:
    require_postgres()
    one = day_on(ONE_OF_EACH, tmp_path / "one", redis_client, lms, guacd)
    check_alone(one)
    many = day_on(SCALED_OUT, tmp_path / "many", redis_client, lms, guacd)
    check_alone(many)
    assert many.comparable() == one.comparable()


@pytest.fixture
def db_url(pg_only: str) -> str:
    """PostgreSQL: the reconcilers below run at once, as on two workers."""
    return pg_only


def test_two_reconcilers_at_once_delete_an_orphan_once(rt: Runtime, world: World, fake_dir: Path) -> None:
    """Two schedulers each enqueue the reconciler; a pass whose job id's time bucket has turned (or a
    backlog) runs it twice at once. The object no lab claims must still be deleted once."""
    config = {"state_dir": str(fake_dir), "call_latency": 0.3}  # both passes list before either deletes
    with rt.session() as db:
        db.get(Backend, world.backend_id).config = config
        db.commit()
    FakeConnector("fake", config).provision(LabSpec(9999, "img-fake", "nobody"))  # no lab row claims it
    rt.redis.hset(schedule.ORPHANS_KEY.format(backend=world.backend_id), "9999", 0)  # unclaimed for ages
    start = threading.Barrier(2)
    results: list[dict[str, int]] = []

    def reconcile() -> None:
        start.wait(timeout=10)
        results.append(schedule.reconcile_backend(rt, world.backend_id))

    passes = [threading.Thread(target=reconcile) for _ in range(2)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=30)
    assert [op for op, lab, _, _ in read_call_log(fake_dir) if lab == 9999] == ["provision", "delete"]
    assert sorted(result["orphans_deleted"] for result in results) == [0, 1]
    assert FakeConnector("fake", config).list_managed() == []
