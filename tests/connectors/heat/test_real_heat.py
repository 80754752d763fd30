"""The Heat connector's own behaviour on real Heat engines: what reaches the stack, multi-machine
outputs, providers with capacity and failover (a failed and a timed-out create), and clear errors.

Two standalone Heat engines stand for two clouds (tests/support/heat.py). TestResource stands in for
servers: it is made slow (`create_seconds`) or failing (`fail`) per provider through the provider's own
`parameters`, the way a real site names each cloud's network or flavor.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from broker.connector import Handle, Observation, ObservedState
from broker.errors import CapacityError, PermanentError, TransientError
from connectors.credentials import derive
from connectors.heat.connector import HeatConnector
from tests.support.heat import backend_config, heat_client, heat_endpoints, lab_spec, provider
from tests.support.http import free_port

pytestmark = [pytest.mark.heat, pytest.mark.slow]
_next_lab = iter(range(int(time.time()) % 100_000 * 100, 10**12))


def new_lab_id() -> int:
    return next(_next_lab)


def drive(connector: HeatConnector, handle: Handle, want: ObservedState, timeout: float = 60) -> tuple[Handle, Observation]:
    """Observe like the broker does (following a moved handle) until `want`; fail on anything else."""
    deadline = time.monotonic() + timeout
    while True:
        seen = connector.observe(handle)
        handle = seen.handle or handle
        if seen.state == want:
            return handle, seen
        assert seen.state == ObservedState.PENDING, seen
        assert time.monotonic() < deadline, f"still {seen} after {timeout} s"
        time.sleep(0.3)


def stacks_of(endpoint: str, tag: str) -> list[Any]:
    return [s for s in heat_client(endpoint).stacks.list(tags=tag) if s.stack_status != "DELETE_COMPLETE"]


def wait_no_stacks(endpoint: str, tag: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while stacks_of(endpoint, tag):
        assert time.monotonic() < deadline, f"stacks tagged {tag} still on {endpoint}"
        time.sleep(0.3)


@pytest.fixture
def endpoints() -> list[str]:
    return heat_endpoints(2)


def connector_on(*providers: dict[str, Any], **settings: Any) -> HeatConnector:
    return HeatConnector("heat-test", backend_config(list(providers), **settings))


def openssl_crypt(password: str, hashed: str) -> str:
    salt = hashed.split("$")[2]
    done = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_stack_gets_the_labs_parameters_and_tags_but_no_learner_identity(endpoints: list[str]) -> None:
    connector = connector_on(provider(endpoints[0], "cloud-a"))
    lab_id = new_lab_id()
    handle, _ = drive(connector, connector.provision(lab_spec(lab_id, course="course-7")), ObservedState.READY)

    stack = heat_client(endpoints[0]).stacks.get(handle["stack_id"])
    prefix = connector.prefix
    assert stack.stack_name == f"{prefix}-lab-{lab_id}"
    assert set(stack.tags) == {prefix, f"{prefix}-lab-{lab_id}", f"{prefix}-course-course-7"}
    assert "learner-1" not in repr((stack.stack_name, stack.tags, handle))
    seen = {o["output_key"]: o["output_value"] for o in stack.outputs}
    assert seen["seen_lab_id"] == f"lab-{lab_id}" and seen["seen_course"] == "course-7"
    creds = derive(connector.config["credential_seed"], lab_id)
    assert seen["seen_service_key"] == creds.service_public_key

    [endpoint] = connector.endpoints(handle)
    assert (endpoint.protocol, endpoint.host, endpoint.port, endpoint.username) == ("ssh", "127.0.0.1", 22, "learner")
    # The learner's password reached the machine only as a hash, and that hash is of the endpoint's password.
    assert endpoint.password and endpoint.password not in repr(stack.to_dict())
    assert openssl_crypt(endpoint.password, seen["seen_password_hash"]) == seen["seen_password_hash"]


def test_a_multi_machine_lab_lists_every_host_with_the_password_the_template_made(endpoints: list[str]) -> None:
    connector = connector_on(provider(endpoints[0], "cloud-a"))
    spec = lab_spec(new_lab_id(), template="heat/multi.yaml")
    hosts = [{"name": n, "ports": [{"protocol": "ssh", "port": 2222}]} for n in ("router", "client-a", "client-b")]
    spec = type(spec)(spec.lab_id, spec.image, spec.owner, {**spec.params, "hosts": hosts}, spec.course, "ssh")
    handle, _ = drive(connector, connector.provision(spec), ObservedState.READY)

    found = connector.endpoints(handle)
    assert [(e.name, e.host, e.port, e.protocol) for e in found] == [
        ("router", "127.0.0.1", 2222, "ssh"), ("client-a", "127.0.0.2", 2222, "ssh"), ("client-b", "127.0.0.3", 2222, "ssh"),
    ]
    passwords = {e.password for e in found}
    assert len(passwords) == 1 and len(passwords.pop()) == 20
    assert {e.username for e in found} == {"learner"}


def test_a_failed_create_is_cleaned_up_and_the_next_provider_takes_the_lab(endpoints: list[str]) -> None:
    connector = connector_on(provider(endpoints[0], "cloud-a", parameters={"fail": True}), provider(endpoints[1], "cloud-b"))
    lab_id = new_lab_id()
    first = connector.provision(lab_spec(lab_id))
    assert first["provider"] == "cloud-a"

    handle, _ = drive(connector, first, ObservedState.READY)

    assert handle["provider"] == "cloud-b" and handle["tried"] == ["cloud-a"]
    assert "cloud-a" in handle["failures"][0] and "Test Resource failed" in handle["failures"][0]
    wait_no_stacks(endpoints[0], f"{connector.prefix}-lab-{lab_id}")  # the failed stack was deleted
    assert [s.id for s in stacks_of(endpoints[1], connector.prefix)] == [handle["stack_id"]]


def test_a_create_running_past_create_timeout_moves_to_the_next_provider(endpoints: list[str]) -> None:
    connector = connector_on(
        provider(endpoints[0], "cloud-a", parameters={"create_seconds": 120}), provider(endpoints[1], "cloud-b"),
        create_timeout=3,
    )
    lab_id = new_lab_id()
    started = time.monotonic()
    handle, _ = drive(connector, connector.provision(lab_spec(lab_id)), ObservedState.READY)

    assert handle["provider"] == "cloud-b"
    assert "not created within 3 s" in handle["failures"][0]
    assert time.monotonic() - started < 60
    wait_no_stacks(endpoints[0], f"{connector.prefix}-lab-{lab_id}")


def test_when_every_provider_fails_the_lab_fails_with_each_reason(endpoints: list[str]) -> None:
    connector = connector_on(
        provider(endpoints[0], "cloud-a", parameters={"fail": True}), provider(endpoints[1], "cloud-b", parameters={"fail": True}),
    )
    handle = connector.provision(lab_spec(new_lab_id()))
    deadline = time.monotonic() + 60
    while (seen := connector.observe(handle)).state == ObservedState.PENDING:
        handle = seen.handle or handle
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert seen.state == ObservedState.ERROR
    assert "cloud-a: " in seen.message and "cloud-b: " in seen.message and "Test Resource failed" in seen.message


def test_capacity_counts_suspended_stacks_and_a_full_backend_waits(endpoints: list[str]) -> None:
    connector = connector_on(provider(endpoints[0], "cloud-a", capacity=1), provider(endpoints[1], "cloud-b", capacity=1))
    first, second, third = (new_lab_id() for _ in range(3))
    a, _ = drive(connector, connector.provision(lab_spec(first)), ObservedState.READY)
    b, _ = drive(connector, connector.provision(lab_spec(second)), ObservedState.READY)
    assert (a["provider"], b["provider"]) == ("cloud-a", "cloud-b")

    connector.suspend(a)
    drive(connector, a, ObservedState.SUSPENDED)
    with pytest.raises(CapacityError) as full:
        connector.provision(lab_spec(third))
    assert "full: cloud-a, cloud-b" in str(full.value)
    assert full.value.user_message.startswith("No lab machine is free right now")

    connector.delete(a)
    drive(connector, a, ObservedState.GONE)
    c, _ = drive(connector, connector.provision(lab_spec(third)), ObservedState.READY)
    assert c["provider"] == "cloud-a"


def test_an_existing_stack_stays_with_its_provider(endpoints: list[str]) -> None:
    settings = backend_config([provider(endpoints[0], "cloud-a", capacity=0), provider(endpoints[1], "cloud-b")])
    lab_id = new_lab_id()
    on_b, _ = drive(HeatConnector("h", settings), HeatConnector("h", settings).provision(lab_spec(lab_id)), ObservedState.READY)
    assert on_b["provider"] == "cloud-b"  # capacity 0: cloud-a takes no new labs

    settings["providers"][0]["capacity"] = -1  # cloud-a enabled again: the lab still stays where it is
    again = HeatConnector("h", settings).provision(lab_spec(lab_id))
    assert (again["provider"], again["stack_id"]) == ("cloud-b", on_b["stack_id"])
    assert stacks_of(endpoints[0], f"{settings['name_prefix']}-lab-{lab_id}") == []


def test_a_parameter_the_template_lacks_is_refused_with_heats_own_message(endpoints: list[str]) -> None:
    connector = connector_on(provider(endpoints[0], "cloud-a"), parameters={"flavour": "lab.small"})
    with pytest.raises(PermanentError) as refused:
        connector.provision(lab_spec(new_lab_id()))
    assert "The Parameter (flavour) was not defined in template." in str(refused.value)
    assert refused.value.user_message == "The cloud could not create this lab. Please try again later or tell your instructor."


def test_an_unreachable_cloud_is_a_passing_fault_and_not_available() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1/admin"
    connector = connector_on(provider(closed, "cloud-down"), call_timeout=3)
    with pytest.raises(TransientError) as down:
        connector.provision(lab_spec(new_lab_id()))
    assert "heat provider cloud-down" in str(down.value) and "ConnectFailure" in str(down.value)
    assert connector.available() is False


def test_a_deleted_stack_is_gone_although_heat_still_answers_its_id(endpoints: list[str]) -> None:
    connector = connector_on(provider(endpoints[0], "cloud-a"))
    handle, _ = drive(connector, connector.provision(lab_spec(new_lab_id())), ObservedState.READY)
    connector.delete(handle)
    drive(connector, handle, ObservedState.GONE)
    assert heat_client(endpoints[0]).stacks.get(handle["stack_id"]).stack_status == "DELETE_COMPLETE"
    unknown = {**handle, "stack_id": "00000000-0000-0000-0000-000000000000"}
    assert connector.observe(unknown).state == ObservedState.GONE  # Heat's 404
    connector.delete(unknown)  # deleting what is gone is a success


def test_each_installation_manages_only_its_own_stacks(endpoints: list[str]) -> None:
    ours = connector_on(provider(endpoints[0], "cloud-a"))
    theirs = connector_on(provider(endpoints[0], "cloud-a"))
    mine, yours = new_lab_id(), new_lab_id()
    ours.provision(lab_spec(mine))
    theirs.provision(lab_spec(yours))
    assert [m.lab_id for m in ours.list_managed()] == [mine]
    assert [m.lab_id for m in theirs.list_managed()] == [yours]
