"""The contract every connector must honour, as a pytest suite to subclass.

A connector's test module subclasses `ConnectorContract` and provides a `connector` fixture (and may
override `image` and `timeout`). The same suite runs against the fake, the local desktop, libvirt, Heat
and Vagrant, so the broker can rely on the behaviour below whatever the backend.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Iterator

import pytest

from broker.connector import Capability, Connector, Handle, LabSpec, ObservedState
from broker.errors import Unsupported

_ids = itertools.count(int(time.time() * 1000) % 1_000_000_000 * 10 + os.getpid() % 10)


class ConnectorContract:
    """Behaviour the broker relies on; subclasses provide the `connector` fixture."""

    image: str = "contract"
    params: dict = {}  # the catalogue entry's spec the backend needs (e.g. a Heat template)
    timeout: float = 60.0
    poll_interval: float = 0.1

    @pytest.fixture
    def connector(self) -> Connector:  # pragma: no cover - subclasses provide it
        raise NotImplementedError

    @pytest.fixture
    def spec(self, connector: Connector) -> Iterator[LabSpec]:
        spec = LabSpec(lab_id=next(_ids), image=self.image, owner="contract-learner", params=self.params)
        yield spec
        for managed in connector.list_managed():
            if managed.lab_id == spec.lab_id:
                connector.delete(managed.handle)

    def wait_for(self, connector: Connector, handle: Handle, state: ObservedState) -> None:
        deadline = time.monotonic() + self.timeout
        seen = connector.observe(handle)
        while seen.state != state:
            assert seen.state in (ObservedState.PENDING, ObservedState.READY, ObservedState.SUSPENDED), seen
            assert time.monotonic() < deadline, f"still {seen} after {self.timeout}s, wanted {state}"
            time.sleep(self.poll_interval)
            seen = connector.observe(handle)
        assert 0 <= seen.progress <= 100

    def test_available(self, connector: Connector) -> None:
        assert connector.available() is True

    def test_provision_becomes_ready_with_an_endpoint(self, connector: Connector, spec: LabSpec) -> None:
        handle = connector.provision(spec)
        self.wait_for(connector, handle, ObservedState.READY)
        endpoint = connector.endpoint(handle)
        assert endpoint.protocol in ("vnc", "rdp", "ssh", "telnet")
        assert endpoint.host and 0 < endpoint.port < 65536

    def test_provision_twice_makes_one_object(self, connector: Connector, spec: LabSpec) -> None:
        first = connector.provision(spec)
        second = connector.provision(spec)
        self.wait_for(connector, second, ObservedState.READY)
        mine = [m for m in connector.list_managed() if m.lab_id == spec.lab_id]
        assert len(mine) == 1
        assert connector.endpoint(first) == connector.endpoint(second)

    def test_suspend_and_resume_keep_the_lab(self, connector: Connector, spec: LabSpec) -> None:
        handle = connector.provision(spec)
        self.wait_for(connector, handle, ObservedState.READY)
        if Capability.SUSPEND not in connector.capabilities:
            with pytest.raises(Unsupported):
                connector.suspend(handle)
            return
        before = connector.endpoint(handle)
        connector.suspend(handle)
        self.wait_for(connector, handle, ObservedState.SUSPENDED)
        connector.resume(handle)
        self.wait_for(connector, handle, ObservedState.READY)
        assert connector.endpoint(handle).protocol == before.protocol

    def test_delete_is_final_and_repeatable(self, connector: Connector, spec: LabSpec) -> None:
        handle = connector.provision(spec)
        self.wait_for(connector, handle, ObservedState.READY)
        assert spec.lab_id in {m.lab_id for m in connector.list_managed()}
        connector.delete(handle)
        self.wait_for(connector, handle, ObservedState.GONE)
        connector.delete(handle)
        assert spec.lab_id not in {m.lab_id for m in connector.list_managed()}
