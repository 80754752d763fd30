"""The connector contract (broker.testing.contract) on a real Vagrant + vagrant-libvirt booting the tiny guest."""

from __future__ import annotations

from typing import Any

import pytest

from broker.connector import Connector
from broker.testing.contract import ConnectorContract
from tests.support.vagrant import tiny_entry

pytestmark = [pytest.mark.vagrant, pytest.mark.libvirt, pytest.mark.slow, pytest.mark.timeout(900)]


class TestVagrantContract(ConnectorContract):
    image = "tiny-lab"
    params = tiny_entry().spec()
    timeout = 300.0
    poll_interval = 0.5

    @pytest.fixture
    def connector(self, backend: dict[str, Any]) -> Connector:
        from connectors.vagrant.connector import VagrantConnector

        return VagrantConnector("vagrant-contract", backend)
