"""The connector contract (broker.testing.contract) on a real libvirtd + QEMU (TCG) booting the tiny guest.

Every test boots a guest; libvirt re-probes QEMU on each start where /dev/kvm is unusable (~1 min here).
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from broker.connector import Connector
from broker.testing.contract import ConnectorContract
from tests.support.libvirt import BOOT_TIMEOUT, qemu_backend, tiny_params

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def backend() -> Iterator[dict[str, Any]]:
    with qemu_backend() as config:
        yield config


class TestLibvirtContractOnQemu(ConnectorContract):
    params = tiny_params(graphics="none")
    timeout = BOOT_TIMEOUT + 30
    poll_interval = 0.5

    @pytest.fixture
    def connector(self, backend: dict[str, Any]) -> Connector:
        from connectors.libvirt.connector import LibvirtConnector

        return LibvirtConnector("qemu-contract", backend)
