"""The fake connector honours the connector contract (in memory and file-backed), and each scripted
failure raises the error class the broker acts on, with a message a learner can read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from broker.connector import LabSpec, ObservedState
from broker.errors import CapacityError, ConnectorError, PermanentError, TransientError, Unsupported
from broker.testing.contract import ConnectorContract
from broker.testing.fake import FakeConnector, reset_memory


class TestFakeInMemory(ConnectorContract):
    timeout = 5.0

    @pytest.fixture
    def connector(self) -> Iterator[FakeConnector]:
        reset_memory()
        yield FakeConnector("contract-memory", {})
        reset_memory()


class TestFakeInAStateDir(ConnectorContract):
    timeout = 5.0

    @pytest.fixture
    def connector(self, tmp_path: Path) -> FakeConnector:
        return FakeConnector("contract-files", {"state_dir": str(tmp_path / "fake"), "provision_delay": 0.2})


def test_two_connectors_on_one_state_dir_see_the_same_objects(tmp_path: Path) -> None:
    """What lets a worker process and the reconciler in another process share one fake backend."""
    config = {"state_dir": str(tmp_path / "shared")}
    here, there = FakeConnector("fake", config), FakeConnector("fake", config)

    handle = here.provision(LabSpec(7, "img", "learner"))

    assert [m.lab_id for m in there.list_managed()] == [7]
    assert there.observe(handle).state == ObservedState.READY
    there.delete(handle)
    assert here.observe(handle).state == ObservedState.GONE


# -- scripted behaviour -----------------------------------------------------------------------------------
@pytest.fixture
def spec() -> LabSpec:
    return LabSpec(lab_id=1, image="img", owner="learner")


@pytest.mark.parametrize(
    ("kind", "error"),
    [("transient", TransientError), ("capacity", CapacityError), ("permanent", PermanentError), ("unsupported", Unsupported)],
)
def test_each_scripted_failure_raises_its_class_with_a_user_message(
    tmp_path: Path, spec: LabSpec, kind: str, error: type[ConnectorError]
) -> None:
    connector = FakeConnector("fake", {"state_dir": str(tmp_path), "fail": {"provision": kind}})

    with pytest.raises(error) as caught:
        connector.provision(spec)

    assert type(caught.value) is error
    assert caught.value.user_message == f"The lab backend failed ({kind})."
    assert connector.list_managed() == []


def test_fail_times_fails_that_many_calls_then_succeeds(tmp_path: Path, spec: LabSpec) -> None:
    connector = FakeConnector("fake", {"state_dir": str(tmp_path), "fail": {"provision": "transient"}, "fail_times": 2})

    for _ in range(2):
        with pytest.raises(TransientError):
            connector.provision(spec)
    handle = connector.provision(spec)

    assert connector.observe(handle).state == ObservedState.READY
    # The count is shared through the state dir, as it is between worker processes.
    assert FakeConnector("fake", connector.config).provision(spec) == handle


def test_only_the_scripted_operation_fails(tmp_path: Path, spec: LabSpec) -> None:
    connector = FakeConnector("fake", {"state_dir": str(tmp_path), "fail": {"suspend": "permanent"}})
    handle = connector.provision(spec)

    with pytest.raises(PermanentError):
        connector.suspend(handle)
    assert connector.observe(handle).state == ObservedState.READY


def test_a_full_backend_raises_capacity_with_a_busy_message(tmp_path: Path) -> None:
    connector = FakeConnector("fake", {"state_dir": str(tmp_path), "capacity": 1})
    connector.provision(LabSpec(1, "img", "a"))

    with pytest.raises(CapacityError) as caught:
        connector.provision(LabSpec(2, "img", "b"))

    assert caught.value.user_message == "All lab machines are busy; try again shortly."
    assert connector.provision(LabSpec(1, "img", "a"))  # the lab it already holds is found, not refused


def test_delays_follow_the_connector_clock() -> None:
    now = [1000.0]
    reset_memory()
    connector = FakeConnector("clocked", {"provision_delay": 30, "suspend_delay": 10}, clock=lambda: now[0])
    handle = connector.provision(LabSpec(1, "img", "learner"))

    assert connector.observe(handle).state == ObservedState.PENDING
    now[0] += 30
    assert connector.observe(handle).state == ObservedState.READY
    connector.suspend(handle)
    assert connector.observe(handle).state == ObservedState.PENDING
    now[0] += 10
    assert connector.observe(handle).state == ObservedState.SUSPENDED
    reset_memory()


def test_resuming_a_vanished_object_is_a_permanent_error(tmp_path: Path, spec: LabSpec) -> None:
    connector = FakeConnector("fake", {"state_dir": str(tmp_path)})
    handle = connector.provision(spec)
    connector.delete(handle)

    with pytest.raises(PermanentError) as caught:
        connector.resume(handle)
    assert caught.value.user_message == "This lab no longer exists on its backend."


def test_a_down_backend_says_so() -> None:
    assert FakeConnector("fake", {"down": True}).available() is False
