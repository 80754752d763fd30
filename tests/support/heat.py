"""The real standalone Heat engines `scripts/test` starts (scripts/lib.sh `ensure_heat`), for the Heat tests.

Their endpoints arrive in LABDESK_TEST_HEAT and LABDESK_TEST_HEAT_2 (two engines: two providers for the
failover tests). Without them the tests skip, saying how to get them. Each test uses its own stack-name
prefix, so stacks of other tests on the same engines never count against its capacity or reconciliation.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from broker.connector import LabSpec

CATALOGUE = Path(__file__).resolve().parents[1] / "connectors" / "heat" / "catalogue"
ENV_VARS = ("LABDESK_TEST_HEAT", "LABDESK_TEST_HEAT_2")
WHY = (
    "no real Heat: {var} is unset (scripts/test starts two standalone Heat engines from "
    "../shared/tools/heat-standalone and sets it; or start one yourself and export {var}=<endpoint>)"
)


def heat_endpoints(count: int = 1) -> list[str]:
    """`count` real Heat endpoints, or skip the test saying which variable is missing."""
    found = []
    for var in ENV_VARS[:count]:
        endpoint = os.environ.get(var)
        if not endpoint:
            pytest.skip(WHY.format(var=var))
        found.append(endpoint)
    return found


def heat_client(endpoint: str) -> Any:
    from heatclient import client

    return client.Client("1", endpoint=endpoint, token="test", timeout=30)


def provider(endpoint: str, name: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "endpoint": endpoint, "token": "test", **settings}


def backend_config(providers: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """A Heat backend's settings (secrets included, as the connector receives them) for one test."""
    return {
        "name_prefix": f"t{secrets.token_hex(4)}",
        "credential_seed": secrets.token_urlsafe(32),
        "catalogue_root": str(CATALOGUE),
        "call_timeout": 20,
        "create_timeout": 120,
        "providers": providers,
        **overrides,
    }


def heat_entry(template: str = "heat/lab.yaml", **heat: Any) -> dict[str, Any]:
    """A catalogue entry's spec (as `images.spec` holds it) for a Heat lab of one SSH machine."""
    return {
        "id": "heat-test",
        "hosts": [{"name": "main", "ports": [{"protocol": "ssh", "port": 22}]}],
        "backends": {"heat": {"template": template, **heat}},
    }


def lab_spec(lab_id: int, template: str = "heat/lab.yaml", course: str = "course-7", **heat: Any) -> LabSpec:
    return LabSpec(lab_id, "heat-test", "learner-1", heat_entry(template, **heat), course=course, protocol="ssh")
