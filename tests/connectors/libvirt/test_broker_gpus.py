"""GPU labs through the broker on the libvirt connector and libvirt's test driver, on PostgreSQL.

The test driver passes through whatever a domain names and would start two domains on one card, so
exclusivity is checked in what really reached libvirt: the `<hostdev>` of every defined domain. Jobs run
in this process (rq's SimpleWorker): each test-driver connection has its own state, and the runtime keeps
one connector, and so one connection per host, for the whole test.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("libvirt", reason="libvirt-python is not installed")
import libvirt  # noqa: E402

from broker import gpus, runtime, schedule, services  # noqa: E402
from broker.lifecycle import LabState  # noqa: E402
from broker.models import Activity, Backend, GpuSlot, Lab  # noqa: E402
from broker.runtime import Runtime  # noqa: E402
from connectors.libvirt.connector import LibvirtConnector  # noqa: E402
from tests.connectors.libvirt.conftest import backend_config, host, host_uri, lab_params  # noqa: E402
from tests.support.inline import run_queued_jobs  # noqa: E402
from tests.support.world import World, add_learner, make_world  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture
def db_url(pg_only: str) -> str:
    return pg_only


@pytest.fixture
def rack(rt: Runtime, tmp_path: Path) -> World:
    """A libvirt backend of one test-driver host (the GPU rack: two A100s among others), an A100 image."""
    world = make_world(rt, kind="libvirt", backend_name="rack",
                       config=backend_config(host("rack", host_uri(tmp_path, "rack"))))
    with rt.session() as session:
        session.get(Activity, world.activity_id).image.spec = lab_params(gpu="nvidia-a100")
        session.commit()
    runtime.install(rt)
    yield world
    runtime.install(None)


def connector(rt: Runtime, world: World) -> LibvirtConnector:
    with rt.session() as session:
        found = rt.connector(session.get(Backend, world.backend_id))
        assert isinstance(found, LibvirtConnector)
        return found


def hostdevs(rt: Runtime, world: World) -> dict[str, str]:
    """The PCI address each defined domain passes through, by domain name: what libvirt was really told."""
    conn = connector(rt, world).connection("rack")
    found: dict[str, str] = {}
    for domain in conn.listAllDomains():
        root = ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for address in root.iterfind("devices/hostdev/source/address"):
            found[domain.name()] = "{:04x}:{:02x}:{:02x}.{:x}".format(*(int(address.get(k), 16) for k in ("domain", "bus", "slot", "function")))
    return found


def state(rt: Runtime, lab_id: int) -> tuple[str, str | None]:
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        return lab.state, lab.waiting_for


def launch(rt: Runtime, world: World, who: str) -> int:
    return services.launch(rt, add_learner(rt, who), world.activity_id, "learner").id


def test_a100_labs_get_a_card_each_and_the_third_waits_for_one(rt: Runtime, rack: World) -> None:
    assert schedule.check_backend(rt, rack.backend_id)  # the health check takes the inventory
    with rt.session() as session:
        models = sorted(session.scalars(select(GpuSlot.model).where(GpuSlot.backend_id == rack.backend_id)))
    assert models.count("nvidia-a100") == 2 and "nvidia-t4-1b" in models

    first, second, third = (launch(rt, rack, f"gpu-{n}") for n in range(3))
    run_queued_jobs(rt)
    assert state(rt, first) == ("running", None) and state(rt, second) == ("running", None)
    assert state(rt, third) == ("requested", "gpu")
    passed = hostdevs(rt, rack)
    assert sorted(passed.values()) == ["0000:17:00.0", "0000:31:00.0"]  # both A100s, one each
    assert f"labdesk-lab-{third}" not in {d.name() for d in connector(rt, rack).connection("rack").listAllDomains()}

    services.request_state(rt, first, LabState.DELETING, "gpu-0", "done")
    run_queued_jobs(rt)  # the delete frees the card; the waiting lab is woken and created on it
    assert state(rt, first)[0] == "deleted" and state(rt, third) == ("running", None)
    now = hostdevs(rt, rack)
    assert now[f"labdesk-lab-{third}"] == passed[f"labdesk-lab-{first}"]
    assert len(set(now.values())) == len(now) == 2


def test_a_passthrough_lab_is_paused_and_keeps_its_card(rt: Runtime, rack: World) -> None:
    lab_id = launch(rt, rack, "pauser")
    run_queued_jobs(rt)
    services.request_state(rt, lab_id, LabState.SUSPENDING, "pauser", "left")
    run_queued_jobs(rt)
    assert state(rt, lab_id)[0] == "suspended"
    domain = connector(rt, rack).connection("rack").lookupByName(f"labdesk-lab-{lab_id}")
    assert domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED  # a passed-through card cannot be saved to disk
    with rt.session() as session:
        assert gpus.held_unit(session, lab_id) is not None  # so the lab still holds it
    services.request_state(rt, lab_id, LabState.RESUMING, "pauser", "back")
    run_queued_jobs(rt)
    assert state(rt, lab_id) == ("running", None) and domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING

