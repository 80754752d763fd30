"""Against a real guacd: set LABDESK_TEST_GUACD=host:port (guacd 1.5 or newer).

Debian does not package guacd; docs/desktop.md says how to build it from the Apache source outside the
repository. The test runs the whole path: a real local-connector desktop (Xvfb + x11vnc), a real rq
worker, a `labdesk tunnel` process, guacd's VNC client, and a WebSocket client acting as the browser.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis

from broker import services
from broker.config import Settings
from broker.runtime import Runtime
from broker.tunnel_tokens import Grant, TokenMinter
from connectors.local.connector import LocalConnector
from tests.conftest import make_settings
from tests.support.browser import require_desktop
from tests.support.http import free_port
from tests.support.inline import lab_state
from tests.support.tunnel import TunnelProcess
from tests.support.tunnel_client import TunnelClient
from tests.support.waiting import wait_until
from tests.support.workers import WorkerPool
from tests.support.world import World, make_world
from tunnel.guacd import ClientInfo, HandshakeError, answer_syncs, connect
from tunnel.hosts import parse_address

GUACD = os.environ.get("LABDESK_TEST_GUACD", "")
pytestmark = [
    pytest.mark.guacd,
    pytest.mark.slow,
    pytest.mark.skipif(not GUACD, reason="set LABDESK_TEST_GUACD=host:port of a real guacd (docs/desktop.md: building guacd)"),
]


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    return sqlite_db_url


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(db_url, tmp_path, guacd_hosts=(GUACD,))


@pytest.fixture
def desktop_lab(rt: Runtime, tmp_path: Path, workers: WorkerPool) -> Iterator[tuple[World, int]]:
    require_desktop()
    state_dir = tmp_path / "desktops"
    world = make_world(rt, kind="local", config={"state_dir": str(state_dir)}, backend_name="local")
    workers.start(1)
    lab = services.launch(rt, world.user_id, world.activity_id, actor="test")
    wait_until(lambda: lab_state(rt, lab.id) == "running", timeout=60, what="the desktop to run")
    yield world, lab.id
    connector = LocalConnector("cleanup", {"state_dir": str(state_dir)})
    for managed in connector.list_managed():
        connector.delete(managed.handle)


def test_a_real_desktop_streams_through_guacd_and_the_tunnel(settings: Settings, tmp_path: Path, desktop_lab: tuple[World, int]) -> None:
    world, lab_id = desktop_lab
    tunnel = TunnelProcess(settings, tmp_path, free_port()).start()
    try:
        client = TunnelClient(tunnel.url, TokenMinter("test-secret").mint(Grant(world.user_id, lab_id, "", False)), width=800, height=600)
        size = client.until("size", timeout=20)
        while size[1][0] != "0":  # the cursor layer (-2) may come first
            size = client.until("size", timeout=20)
        assert int(size[1][1]) > 0 and int(size[1][2]) > 0, "guacd sized the default layer from the VNC desktop"
        client.until("img", timeout=20)
        client.until("sync", timeout=20)
        client.send("key", 97, 1)
        client.send("key", 97, 0)
        client.until("sync", timeout=20)  # guacd goes on streaming while the tunnel relays our syncs
        client.close()
        wait_until(lambda: "ended by browser" in tunnel.log(), timeout=10, what="the tunnel to end the session")
    finally:
        tunnel.stop()


def test_the_handshake_with_real_guacd_and_its_error_for_a_missing_server() -> None:
    """guacd 1.6.0 answers the handshake, then ends a session to a VNC server it cannot reach. How varies from
    run to run on a slow VM: `error` 519 and `disconnect`; `disconnect` alone; or nothing until its 15-s rule
    drops the silent client with `error` 776 (sometimes after a 519 and a `nop`). Always an end, never a
    frame from a server that is not there."""

    async def scenario() -> list[tuple[str, list[str]]]:
        params = {"hostname": "127.0.0.1", "port": str(free_port())}
        connection = await connect(parse_address(GUACD), "vnc", params, ClientInfo(timezone="UTC", name="test"))
        assert connection.version == "VERSION_1_5_0" and connection.connection_id.startswith("$")
        seen: list[tuple[str, list[str]]] = []
        for _ in range(25):  # guacd does not close the socket after `disconnect`: read until it comes
            seen += [(i.opcode, list(i.args)) for i in await answer_syncs(connection, 1)]
            if any(opcode == "disconnect" for opcode, _ in seen):
                break
        await connection.close()
        return seen

    seen = asyncio.run(scenario())
    assert any(opcode == "disconnect" for opcode, _ in seen), seen
    assert {opcode for opcode, _ in seen} <= {"error", "disconnect", "sync", "nop"}, seen
    assert {args[1] for opcode, args in seen if opcode == "error"} <= {"519", "776"}, seen  # upstream not found; client timeout


def test_real_guacd_refuses_an_unknown_protocol() -> None:
    async def scenario() -> None:
        await connect(parse_address(GUACD), "gopher", {}, ClientInfo())

    with pytest.raises(HandshakeError):
        asyncio.run(scenario())
