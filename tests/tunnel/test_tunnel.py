"""The tunnel as a browser meets it: a real `labdesk tunnel` process between a WebSocket and a guacd double.

Every test opens real sockets on loopback; the lab reaches `running` through the real jobs on the fake
backend, whose endpoint (with its password) is sealed in the database where only the tunnel reads it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from redis import Redis
from sqlalchemy import select

from broker import services
from broker.config import Settings
from broker.models import AuditEvent, Membership, User
from broker.runtime import Runtime
from broker.tunnel_tokens import Grant, TokenMinter
from tests.conftest import make_settings
from tests.support.guacd_double import ConnectionRecord, GuacdDouble
from tests.support.http import free_port
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.tunnel import TunnelProcess
from tests.support.tunnel_client import TunnelClient
from tests.support.world import World, add_learner, make_world

pytestmark = pytest.mark.slow
ENDPOINT = {"protocol": "vnc", "host": "10.9.8.7", "port": 5901, "password": "s3cret;pw"}
SECOND = {"protocol": "ssh", "host": "10.9.8.8", "port": 22, "username": "lab", "password": "pw2", "name": "server"}


@pytest.fixture
def db_url(sqlite_db_url: str) -> str:
    """SQLite only: the tunnel's database reads are the same on both, and these tests start processes."""
    return sqlite_db_url


@pytest.fixture
def guacds(start_guacd_double: Callable[..., GuacdDouble]) -> list[GuacdDouble]:
    return [start_guacd_double(sync_interval=0.2), start_guacd_double(sync_interval=0.2)]


@pytest.fixture
def settings(db_url: str, tmp_path: Path, redis_client: Redis, guacds: list[GuacdDouble]) -> Settings:
    hosts = tuple(f"127.0.0.1:{g.address[1]}" for g in guacds[:1])
    return make_settings(db_url, tmp_path, guacd_hosts=hosts, guacd_check_interval=1)


@pytest.fixture
def world(rt: Runtime, fake_dir: Path) -> World:
    return make_world(rt, config={"state_dir": str(fake_dir), "endpoints": [ENDPOINT, SECOND]})


@pytest.fixture
def tunnel(settings: Settings, tmp_path: Path) -> Iterator[TunnelProcess]:
    process = TunnelProcess(settings, tmp_path, free_port()).start()
    yield process
    process.stop()


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter("test-secret")


def running_lab(rt: Runtime, user_id: int, activity_id: int) -> int:
    lab = services.launch(rt, user_id, activity_id, actor="test")
    run_queued_jobs(rt)
    assert lab_state(rt, lab.id) == "running"
    return lab.id


@pytest.fixture
def lab_id(rt: Runtime, world: World) -> int:
    return running_lab(rt, world.user_id, world.activity_id)


def session_record(double: GuacdDouble, index: int = 0, timeout: float = 5.0) -> ConnectionRecord:
    """The index-th desktop session at the double (the tunnel's health probes, which stop after
    `select`, are not sessions)."""
    sessions = lambda: [r for r in double.connections if r.ready]  # noqa: E731
    double.wait_for(lambda: len(sessions()) > index, timeout)
    return sessions()[index]


def probes(double: GuacdDouble) -> int:
    return len([r for r in double.connections if [i[0] for i in r.handshake] == ["select", "disconnect"]])


def open_session(tunnel: TunnelProcess, minter: TokenMinter, grant: Grant, **query: object) -> TunnelClient:
    return TunnelClient(tunnel.url, minter.mint(grant), **query)


def test_a_session_relays_frames_and_input_with_the_server_side_endpoint(
    tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    client = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False), width=1280, height=720, dpi=120, timezone="Europe/Berlin")
    first = client.until("", answer_sync=False)
    assert client.seen[0] == first and len(first[1][0]) == 36, "the tunnel's id comes first, as guacamole-common-js expects"
    size = client.until("size")
    assert size[1][1:] == ("640", "480")
    client.until("end")
    client.until("sync")
    client.send("key", 65307, 1)
    client.send("", "ping", 12345)
    assert ("", ("ping", "12345")) in [client.until("")], "the tunnel answers guacamole-common-js's ping itself"
    record = session_record(guacds[0])
    guacds[0].wait_for(lambda: ("key", ("65307", "1")) in record.received)
    assert record.params["hostname"] == "10.9.8.7" and record.params["port"] == "5901"
    assert record.params["password"] == "s3cret;pw"
    assert [i[0] for i in record.handshake] == ["select", "size", "audio", "video", "image", "timezone", "name", "connect"]
    assert record.handshake[1][1] == ("1280", "720", "120")
    assert record.handshake[5][1] == ("Europe/Berlin",)
    assert record.handshake[6][1] == ("learner-1",)
    assert not any(i[0] == "" for i in record.received), "internal instructions never reach guacd"
    guacds[0].wait_for(lambda: len(record.sync_replies) >= 1)
    client.close()
    guacds[0].wait_for(lambda: record.closed)
    assert record.clean_disconnect, "guacd hears `disconnect` when the browser leaves"


def test_big_blobs_and_titles_with_semicolons_arrive_whole(
    tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    client = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False))
    client.until("sync")
    record = session_record(guacds[0])
    title = "Terminal; a.b,c — Überprüfung 日本 🎓"
    guacds[0].send(record.id, f"4.name,{len(title)}.{title};")
    sent = guacds[0].send_blob(record.id, 100_000)
    assert client.until("name")[1] == (title,)
    blob = client.until("blob", timeout=10)
    assert blob[1][1] == sent
    client.close()


def test_the_browser_cannot_choose_host_port_or_lift_read_only(
    tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    grant = Grant(world.user_id, lab_id, "", read_only=True)
    client = open_session(tunnel, minter, grant, hostname="evil.example", port=22, password="x", **{"read-only": "false"})
    client.until("sync")
    client.send("key", 97, 1)
    client.send("mouse", 10, 10, 1)
    client.send("nop")
    record = session_record(guacds[0])
    guacds[0].wait_for(lambda: ("nop", ()) in record.received)
    assert record.params["hostname"] == "10.9.8.7" and record.params["port"] == "5901"
    assert record.params["read-only"] == "true"
    assert not [i for i in record.received if i[0] in ("key", "mouse")], "a read-only session's input never reaches guacd"
    client.close()


def test_a_token_opens_one_session_once(
    tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    token = minter.mint(Grant(world.user_id, lab_id, "", False))
    TunnelClient(tunnel.url, token).until("sync")
    message, status, reason = TunnelClient(tunnel.url, token).refusal()
    assert "already used" in message and status == 0x0301 and reason == "769"
    assert len([r for r in guacds[0].connections if r.ready]) == 1


def test_an_expired_token_is_refused(tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int) -> None:
    token = minter.mint(Grant(world.user_id, lab_id, "", False), now=time.time() - 61)
    message, status, _ = TunnelClient(tunnel.url, token).refusal()
    assert "expired" in message and status == 0x0301
    assert not [r for r in guacds[0].connections if r.ready]


def test_a_tampered_token_is_refused(tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int) -> None:
    token = minter.mint(Grant(world.user_id, lab_id, "", False))
    middle = len(token) // 2
    forged = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]
    message, status, _ = TunnelClient(tunnel.url, forged).refusal()
    assert "invalid" in message and status == 0x0301
    other_key = TokenMinter("another-secret").mint(Grant(world.user_id, lab_id, "", False))
    assert "invalid" in TunnelClient(tunnel.url, other_key).refusal()[0]
    assert not [r for r in guacds[0].connections if r.ready]


def test_one_learners_token_never_opens_another_learners_lab(
    rt: Runtime, tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    other = add_learner(rt, "learner-2")
    message, status, _ = open_session(tunnel, minter, Grant(other, lab_id, "", False)).refusal()
    assert "someone else" in message and status == 0x0303
    message, _, _ = open_session(tunnel, minter, Grant(other, lab_id, "", read_only=True, watch=True)).refusal()
    assert "instructors" in message, "a learner cannot pass as a watching instructor"
    assert not [r for r in guacds[0].connections if r.ready]


def test_a_lab_that_is_not_running_is_refused_with_what_to_do(
    rt: Runtime, tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    services.request_state(rt, lab_id, services.S.SUSPENDING, "test", "idle")
    message, status, _ = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False)).refusal()
    assert "suspending" in message and "Reload" in message and status == 0x0205
    message, _, _ = open_session(tunnel, minter, Grant(world.user_id, 999, "", False)).refusal()
    assert "no longer exists" in message


def test_each_host_of_a_multi_host_lab_opens_with_its_own_protocol(
    tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    client = open_session(tunnel, minter, Grant(world.user_id, lab_id, "server", False))
    client.until("sync")
    record = session_record(guacds[0])
    assert record.protocol == "ssh"
    assert (record.params["hostname"], record.params["username"], record.params["password"]) == ("10.9.8.8", "lab", "pw2")
    message, _, _ = open_session(tunnel, minter, Grant(world.user_id, lab_id, "nope", False)).refusal()
    assert "no machine called 'nope'" in message


def test_a_guacd_that_is_down_is_reported_to_the_browser(
    settings: Settings, tmp_path: Path, minter: TokenMinter, world: World, lab_id: int
) -> None:
    import dataclasses

    nowhere = dataclasses.replace(settings, guacd_hosts=(f"127.0.0.1:{free_port()}",))
    tunnel = TunnelProcess(nowhere, tmp_path, free_port()).start()
    try:
        message, status, reason = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False)).refusal()
    finally:
        tunnel.stop()
    assert "No desktop service is available" in message and status == 0x0207 and reason == "519"


def test_an_instructor_watches_read_only_with_an_audit_trail_and_the_learner_is_told(
    rt: Runtime, tunnel: TunnelProcess, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    teacher = add_learner(rt, "prof-x")
    with rt.session() as session:
        session.add(Membership(course_id=world.course_id, user_id=teacher, role="instructor"))
        session.commit()
    watched = open_session(tunnel, minter, Grant(teacher, lab_id, "", True, watch=True))
    assert "not connected" in watched.refusal()[0], "there is nothing to join before the learner connects"
    learner = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False))
    learner.until("sync")
    owner = session_record(guacds[0], 0)
    watcher = open_session(tunnel, minter, Grant(teacher, lab_id, "", True, watch=True))
    watcher.until("sync")
    joined = session_record(guacds[0], 1)
    assert joined.joined and joined.id == owner.id, "the instructor joins the learner's own guacd connection"
    assert joined.params["read-only"] == "true"
    assert rt.redis.hvals(f"labdesk:tunnel:watchers:{lab_id}") == [b"prof-x"]
    watcher.send("key", 97, 1)
    watcher.send("nop")
    guacds[0].wait_for(lambda: ("nop", ()) in joined.received)
    assert not [i for i in joined.received if i[0] == "key"]
    watcher.close()
    guacds[0].wait_for(lambda: joined.closed)
    deadline = time.monotonic() + 5
    while rt.redis.hvals(f"labdesk:tunnel:watchers:{lab_id}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rt.redis.hvals(f"labdesk:tunnel:watchers:{lab_id}") == []
    def audit() -> list[tuple[str, str]]:
        with rt.session() as session:
            return sorted(session.execute(select(AuditEvent.action, AuditEvent.actor).where(AuditEvent.lab_id == lab_id)).all())  # type: ignore[arg-type]

    while len(audit()) < 2 and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert audit() == [("watch.end", f"user:{teacher}"), ("watch.start", f"user:{teacher}")]
    learner.close()


def test_sessions_spread_over_healthy_guacds_and_a_watcher_follows_the_learners_guacd(
    rt: Runtime, settings: Settings, tmp_path: Path, minter: TokenMinter, guacds: list[GuacdDouble], world: World, lab_id: int
) -> None:
    import dataclasses

    both = dataclasses.replace(settings, guacd_hosts=tuple(f"127.0.0.1:{g.address[1]}" for g in guacds))
    tunnel = TunnelProcess(both, tmp_path, free_port()).start()
    try:
        second = add_learner(rt, "learner-2")
        other_lab = running_lab(rt, second, world.activity_id)
        first_session = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False))
        first_session.until("sync")
        session_record(guacds[0])
        other_session = open_session(tunnel, minter, Grant(second, other_lab, "", False))
        other_session.until("sync")
        learner_on_b = session_record(guacds[1])
        assert not [r for r in guacds[0].connections if r.ready][1:], "the second session went to the less loaded guacd"

        teacher = add_learner(rt, "prof-y")
        with rt.session() as session:
            session.add(Membership(course_id=world.course_id, user_id=teacher, role="instructor"))
            session.commit()
        watcher = open_session(tunnel, minter, Grant(teacher, other_lab, "", True, watch=True))
        watcher.until("sync")
        assert session_record(guacds[1], 1).id == learner_on_b.id, "the watcher joins on the learner's guacd"

        first_session.close()
        guacds[0].stop()
        time.sleep(2.5)  # two health checks
        again = open_session(tunnel, minter, Grant(world.user_id, lab_id, "", False))
        again.until("sync")
        assert len([r for r in guacds[1].connections if r.ready]) == 3, "a guacd that is down gets no new session"
    finally:
        tunnel.stop()
    assert "guacd 127.0.0.1:%d is DOWN" % guacds[0].address[1] in tunnel.log()


def test_the_tunnel_reports_its_health_for_load_balancers(tunnel: TunnelProcess, guacds: list[GuacdDouble]) -> None:
    import requests

    health = requests.get(f"http://127.0.0.1:{tunnel.port}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"sessions": 0, "guacd": {f"127.0.0.1:{guacds[0].address[1]}": True}}
    guacds[0].stop()
    deadline = time.monotonic() + 5
    while requests.get(f"http://127.0.0.1:{tunnel.port}/healthz", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "the tunnel never noticed that its only guacd is down"
        time.sleep(0.2)
