"""A desktop session that ends while Redis is down, through a real `labdesk tunnel` on a private Redis.

Why: as a session ends the tunnel updates its records in Redis (the guacd load, the live session). With
Redis down that raised out of the session's handler: a traceback in the tunnel's log, and the browser's
socket closed by the library with 1011 ("internal error", which the lab page reads as a failure) instead
of the tunnel's own clean close. The records expire on their own, so the close must go on without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from broker.config import Settings
from broker.runtime import Runtime
from broker.tunnel_tokens import Grant, TokenMinter
from tests.conftest import make_settings
from tests.support.guacd_double import GuacdDouble
from tests.support.http import free_port
from tests.support.private_services import PrivateRedis, restartable_redis, runtime_on_the_settings_redis  # noqa: F401  (fixtures)
from tests.support.tunnel import TunnelProcess
from tests.support.tunnel_client import TunnelClient
from tests.support.world import World, make_world
from tests.tunnel.test_tunnel import ENDPOINT, running_lab, session_record

pytestmark = pytest.mark.slow


@pytest.fixture
def guacd(start_guacd_double: Callable[..., GuacdDouble]) -> GuacdDouble:
    return start_guacd_double(sync_interval=0.2)


@pytest.fixture
def settings(sqlite_db_url: str, tmp_path: Path, restartable_redis: PrivateRedis, guacd: GuacdDouble) -> Settings:
    return make_settings(sqlite_db_url, tmp_path, redis_url=restartable_redis.url(0),
                         guacd_hosts=(f"127.0.0.1:{guacd.address[1]}",), guacd_check_interval=1)


@pytest.fixture
def world(rt: Runtime, fake_dir: Path) -> World:
    return make_world(rt, config={"state_dir": str(fake_dir), "endpoints": [ENDPOINT]})


@pytest.fixture
def tunnel(settings: Settings, tmp_path: Path) -> Iterator[TunnelProcess]:
    process = TunnelProcess(settings, tmp_path, free_port()).start()
    yield process
    process.stop()


def close_code(client: TunnelClient) -> int | None:
    """Read (answering syncs) until the tunnel closes the socket; its close code."""
    for _ in range(200):
        for instruction in client.read(timeout=0.1):
            if instruction[0] == "sync":
                client.send("sync", instruction[1][0])
        if client.closed:
            return client.ws.close_code
    raise AssertionError("the tunnel did not close the browser's socket")


def test_a_session_ending_while_redis_is_down_closes_cleanly_and_the_next_one_opens_after(
    rt: Runtime, world: World, tunnel: TunnelProcess, guacd: GuacdDouble, restartable_redis: PrivateRedis
) -> None:
    lab_id = running_lab(rt, world.user_id, world.activity_id)
    minter = TokenMinter("test-secret")
    client = TunnelClient(tunnel.url, minter.mint(Grant(world.user_id, lab_id, "", False)))
    client.until("sync")
    record = session_record(guacd)

    restartable_redis.stop()
    guacd.kill(record.id)  # the lab's desktop goes away while Redis is down

    assert close_code(client) == 1000, "a clean close: the page's own reconnect logic decides what to show"
    log = tunnel.log()
    assert "Traceback" not in log and "connection handler failed" not in log, log[-3000:]
    assert "not recorded" in log and "expires on its own" in log

    restartable_redis.start()
    after = TunnelClient(tunnel.url, minter.mint(Grant(world.user_id, lab_id, "", False)))
    after.until("sync", timeout=10)
    after.close()
