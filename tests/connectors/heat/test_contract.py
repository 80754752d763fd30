"""The connector contract (broker.testing.contract) on a real OpenStack Heat engine."""

from __future__ import annotations

import pytest

from broker.connector import Connector
from broker.testing.contract import ConnectorContract
from connectors.heat.connector import HeatConnector
from tests.support.heat import backend_config, heat_endpoints, heat_entry, provider

pytestmark = [pytest.mark.heat, pytest.mark.slow]


class TestHeatContract(ConnectorContract):
    params = heat_entry()
    timeout = 60.0
    poll_interval = 0.3

    @pytest.fixture
    def connector(self) -> Connector:
        [endpoint] = heat_endpoints(1)
        return HeatConnector("heat-contract", backend_config([provider(endpoint, "cloud-a")]))
