"""The console's guacd section: what real tunnel health checks (tunnel.hosts.GuacdHosts, a guacd double that
speaks the protocol and a port where nothing listens) publish, read back by broker.guacd_status and shown
on /admin/guacd to admins only."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from broker.guacd_status import guacd_status
from broker.runtime import Runtime
from tests.conftest import REDIS_URL
from tests.support.admin_browser import Browser, signed_in_root
from tests.support.guacd_double import GuacdDouble, guacd_doubles
from tests.support.http import LiveServer, free_port
from tunnel.hosts import GuacdHosts, label

INTERVAL = 10.0


@pytest.fixture
def guacd() -> Iterator[GuacdDouble]:
    with guacd_doubles() as start:
        yield start()


def check_as_tunnel(addresses: list[tuple[str, int]], sessions_on_first: int = 0) -> None:
    """One tunnel process's health check and report, exactly as `labdesk tunnel` runs it."""
    async def run() -> None:
        redis = AsyncRedis.from_url(REDIS_URL)
        hosts = GuacdHosts(addresses, redis, INTERVAL)
        await hosts.check()
        for _ in range(sessions_on_first):
            await hosts.opened(addresses[0])
        await redis.aclose()

    asyncio.run(run())


def test_health_and_sessions_reported_by_tunnels_are_read_back(redis_client: Redis, guacd: GuacdDouble) -> None:
    alive, dead = label(guacd.address), f"127.0.0.1:{free_port()}"
    [unknown, _], tunnels = guacd_status(redis_client, (alive, dead), INTERVAL)
    assert (unknown.state, tunnels) == ("unknown", 0)  # no tunnel has reported: nothing is claimed

    check_as_tunnel([guacd.address, ("127.0.0.1", int(dead.split(":")[1]))], sessions_on_first=2)
    [up, down], tunnels = guacd_status(redis_client, (alive, dead), INTERVAL)
    assert tunnels == 1
    assert (up.state, up.up_in, up.reporting, up.sessions) == ("up", 1, 1, 2)
    assert (down.state, down.up_in, down.reporting, down.sessions) == ("down", 0, 1, 0)

    check_as_tunnel([("127.0.0.1", int(dead.split(":")[1])), guacd.address])  # a second tunnel process...
    redis_client.delete(*redis_client.keys("labdesk:tunnel:health:*"))  # ...whose reports are gone: not counted
    [status], _ = guacd_status(redis_client, (alive,), INTERVAL)
    assert status.reporting == 0 and status.state == "unknown"


def test_a_guacd_some_tunnels_cannot_reach_is_partly_down() -> None:
    from broker.guacd_status import GuacdStatus

    assert GuacdStatus("g:4822", up_in=1, reporting=2, sessions=0).state == "partly"


def test_the_page_shows_each_guacd_to_admins_only(rt: Runtime, server: LiveServer, guacd: GuacdDouble) -> None:
    dead_port = free_port()
    rt.settings = dataclasses.replace(rt.settings, guacd_hosts=(label(guacd.address), f"127.0.0.1:{dead_port}"))  # the app's runtime
    anonymous = Browser(server.url).get("/admin/guacd", allow_redirects=False)
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/admin/login")

    admin = signed_in_root(rt, server.url)
    before = admin.get("/admin/guacd").text
    assert "No tunnel process has reported recently" in before and "Unknown" in before
    check_as_tunnel([guacd.address, ("127.0.0.1", dead_port)])
    page = admin.get("/admin/guacd").text
    assert "1 tunnel process reported" in page
    rows = page.split("<tbody>")[1]
    assert f"<code>{label(guacd.address)}</code></td>\n      <td class=\"health-up\">Up</td>" in rows
    assert f"<code>127.0.0.1:{dead_port}</code></td>\n      <td class=\"health-down\">Down</td>" in rows
    assert 'href="/admin/guacd"' in page  # the section is in the console's navigation now
