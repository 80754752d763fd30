"""Tests of the local desktop connector: the contract, real desktops over RFB, and its pure helpers.

Tests marked `desktop` start real Xvfb + x11vnc process groups and delete them again; they skip when
those programs are missing. The others need no display and run anywhere.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Iterator

import pytest

from broker.connector import Connector, Handle, LabSpec, ObservedState
from broker.errors import PermanentError
from broker.testing.contract import ConnectorContract
from connectors.local import displays, labs, processes, xauth
from connectors.local.connector import HOST, LocalConnector
from connectors.local.desktop import Desktop, marker
from connectors.local.password import new_password, read_password, write_password
from connectors.local.ports import free_port
from connectors.local.probe import speaks_rfb
from tests import rfb


def require_desktop() -> None:
    """Skip unless this host can run desktops."""
    for program in ("Xvfb", "x11vnc"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} not installed: apt-get install xvfb x11vnc")


def make_connector(state_dir: Path) -> LocalConnector:
    return LocalConnector(name="local-test", config={"state_dir": str(state_dir)})


def spec(lab_id: int) -> LabSpec:
    return LabSpec(lab_id=lab_id, image="desktop", owner="learner")


def wait_for(connector: Connector, handle: Handle, state: ObservedState, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (seen := connector.observe(handle)).state != state:
        assert time.monotonic() < deadline, f"still {seen}, wanted {state}"
        time.sleep(0.1)


def record_of(handle: Handle) -> labs.LabRecord:
    record = labs.read_record(Path(handle["dir"]))
    assert record is not None
    return record


def alive_pids(handle: Handle) -> list[int]:
    """The live processes of a lab's group, straight from /proc."""
    return [m.pid for m in processes.live_members(record_of(handle).pgid, processes.scan())]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalConnector]:
    """A local connector on a private state_dir; every lab it still holds is deleted afterwards."""
    require_desktop()
    connector = make_connector(tmp_path / "state")
    yield connector
    for managed in connector.list_managed():
        connector.delete(managed.handle)


@pytest.fixture
def ready(local: LocalConnector) -> Handle:
    """A provisioned lab that answers over VNC."""
    handle = local.provision(spec(1))
    wait_for(local, handle, ObservedState.READY)
    return handle


# -- the contract -------------------------------------------------------------------------------------
@pytest.mark.desktop
class TestLocalContract(ConnectorContract):
    timeout = 30.0

    @pytest.fixture
    def connector(self, tmp_path: Path) -> LocalConnector:
        require_desktop()
        return make_connector(tmp_path / "state")


# -- real desktops ------------------------------------------------------------------------------------
def _provision_and_exit(state_dir: str, lab_id: int) -> None:
    """Runs in a child process, like an rq work-horse that exits once the job is done."""
    make_connector(Path(state_dir)).provision(spec(lab_id))


def _x11_setup(display: int, cookie: bytes) -> int:
    """Open an X11 connection with `cookie` (b"" for none); 1 means accepted, 0 refused."""
    name = xauth.AUTH_NAME if cookie else b""
    pad = lambda data: data + b"\0" * (-len(data) % 4)  # noqa: E731
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(f"/tmp/.X11-unix/X{display}")
        conn.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, len(name), len(cookie)) + pad(name) + pad(cookie))
        return conn.recv(1)[0]


@pytest.mark.desktop
class TestLocalDesktop:
    def test_vnc_login_with_the_endpoint_password(self, local: LocalConnector, ready: Handle) -> None:
        endpoint = local.endpoint(ready)
        assert (endpoint.protocol, endpoint.host) == ("vnc", "127.0.0.1")
        assert rfb.connect(endpoint.host, endpoint.port, endpoint.password) == (1280, 800)

    def test_vnc_login_with_a_wrong_password_fails(self, local: LocalConnector, ready: Handle) -> None:
        endpoint = local.endpoint(ready)
        with pytest.raises(rfb.AuthFailed):
            rfb.connect(endpoint.host, endpoint.port, "wrong!!!")

    def test_x_display_refuses_clients_without_the_cookie(self, ready: Handle) -> None:
        record = record_of(ready)
        cookie = (Path(ready["dir"]) / "Xauthority").read_bytes()[-16:]
        assert _x11_setup(record.display, b"") == 0
        assert _x11_setup(record.display, cookie) == 1

    def test_suspend_stops_the_server_and_resume_restarts_it(
        self, local: LocalConnector, ready: Handle
    ) -> None:
        port = local.endpoint(ready).port
        local.suspend(ready)
        assert local.observe(ready).state == ObservedState.SUSPENDED
        started = time.monotonic()
        assert not speaks_rfb(HOST, port, timeout=1.0)
        assert time.monotonic() - started >= 0.9  # the kernel accepted the connection; nobody answered
        local.resume(ready)
        wait_for(local, ready, ObservedState.READY, timeout=5)
        assert speaks_rfb(HOST, port)

    def test_delete_ends_every_process_and_removes_the_directory(
        self, local: LocalConnector, ready: Handle
    ) -> None:
        record = record_of(ready)
        pids = alive_pids(ready)
        assert len(pids) >= 3  # supervisor, Xvfb, x11vnc (+ window manager, app)
        local.delete(ready)
        survivors = [p.pid for p in processes.scan() if p.pid in pids and p.alive]
        assert survivors == []
        assert not Path(ready["dir"]).exists()
        assert record.display not in displays.in_use()
        assert local.observe(ready).state == ObservedState.GONE

    def test_delete_ends_a_suspended_lab(self, local: LocalConnector, ready: Handle) -> None:
        pgid = record_of(ready).pgid
        local.suspend(ready)
        local.delete(ready)
        assert processes.live_members(pgid, processes.scan()) == []

    def test_a_lab_outlives_the_process_that_created_it(self, local: LocalConnector) -> None:
        context = multiprocessing.get_context("fork")
        child = context.Process(target=_provision_and_exit, args=(str(local.state_dir), 7))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        [managed] = local.list_managed()
        wait_for(local, managed.handle, ObservedState.READY)

    def test_a_lab_whose_processes_died_is_gone_and_provisioned_anew(
        self, local: LocalConnector, ready: Handle
    ) -> None:
        first = record_of(ready)
        os.killpg(first.pgid, signal.SIGKILL)
        processes.wait_gone(first.pgid, 5)
        assert local.observe(ready).state == ObservedState.GONE
        assert local.provision(spec(1)) == ready
        wait_for(local, ready, ObservedState.READY)
        assert record_of(ready).pgid != first.pgid
        assert first.display not in displays.in_use() or record_of(ready).display == first.display

    def test_the_catalogue_entrys_command_is_the_labs_app(self, local: LocalConnector) -> None:
        marker_seconds = "4242.5"
        params = {"backends": {"local": {"command": f"sleep {marker_seconds}"}}}
        handle = local.provision(LabSpec(lab_id=77, image="custom", owner="learner", params=params))
        wait_for(local, handle, ObservedState.READY)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in alive_pids(handle)]
        assert any(f"sleep {marker_seconds}".encode() in command for command in commands), commands

    def test_two_labs_get_their_own_display_and_port(self, local: LocalConnector, ready: Handle) -> None:
        other = local.provision(spec(2))
        wait_for(local, other, ObservedState.READY)
        assert record_of(other).display != record_of(ready).display
        assert local.endpoint(other).port != local.endpoint(ready).port
        assert local.endpoint(other).password != local.endpoint(ready).password

    def test_concurrent_workers_make_one_lab_each(self, local: LocalConnector) -> None:
        context = multiprocessing.get_context("fork")
        lab_ids = [11, 12, 13, 11, 11]
        state_dir = str(local.state_dir)
        children = [context.Process(target=_provision_and_exit, args=(state_dir, i)) for i in lab_ids]
        for child in children:
            child.start()
        for child in children:
            child.join(30)
        assert [c.exitcode for c in children] == [0] * len(children)
        managed = local.list_managed()
        assert sorted(m.lab_id for m in managed) == [11, 12, 13]
        records = [record_of(m.handle) for m in managed]
        assert len({r.display for r in records}) == len({r.port for r in records}) == 3
        pgids = {p.pgid for p in processes.scan() if p.alive}
        assert {r.pgid for r in records} <= pgids
        for m in managed:
            wait_for(local, m.handle, ObservedState.READY)

    def test_the_workers_environment_does_not_reach_the_desktop(
        self, local: LocalConnector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LABDESK_SECRET_KEY", "do-not-leak")
        handle = local.provision(spec(3))
        wait_for(local, handle, ObservedState.READY)
        for pid in alive_pids(handle):
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"do-not-leak" not in environ
            assert marker(Path(handle["dir"])).encode() in environ.split(b"\0")

    def test_the_password_is_in_a_private_file_not_in_the_handle_or_record(
        self, local: LocalConnector, ready: Handle
    ) -> None:
        password = local.endpoint(ready).password
        assert password and len(password) <= 8
        assert password not in json.dumps(ready)
        lab_json = (Path(ready["dir"]) / "lab.json").read_text()
        assert password not in lab_json
        password_file = Path(json.loads(lab_json)["password_file"])
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(ready["dir"]).stat().st_mode) == 0o700


# -- bad input and missing programs -------------------------------------------------------------------
class TestLocalRefusals:
    def test_provision_without_xvfb_is_a_permanent_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        only_vnc = tmp_path / "bin"
        only_vnc.mkdir()
        (only_vnc / "x11vnc").write_text("#!/bin/sh\n")
        (only_vnc / "x11vnc").chmod(0o755)
        monkeypatch.setenv("PATH", str(only_vnc))
        connector = make_connector(tmp_path / "state")
        with pytest.raises(PermanentError) as raised:
            connector.provision(spec(1))
        assert raised.value.user_message == "This server cannot start local desktops: Xvfb is not installed."
        assert connector.available() is False
        assert connector.list_managed() == []

    def test_provision_without_x11vnc_is_a_permanent_error(self, tmp_path: Path) -> None:
        require_desktop()
        config = {"state_dir": str(tmp_path), "x11vnc": "/nonexistent/x11vnc"}
        connector = LocalConnector("local-test", config)
        with pytest.raises(PermanentError, match="x11vnc not found") as raised:
            connector.provision(spec(1))
        assert "x11vnc is not installed" in raised.value.user_message

    def test_an_unusable_state_dir_makes_the_backend_unavailable(self, tmp_path: Path) -> None:
        require_desktop()
        (tmp_path / "file").write_text("")
        connector = make_connector(tmp_path / "file" / "state")
        assert connector.available() is False
        with pytest.raises(PermanentError, match="state"):
            connector.provision(spec(1))

    def test_a_gone_lab_observes_gone_and_deletes_quietly(self, tmp_path: Path) -> None:
        connector = make_connector(tmp_path)
        handle = {"lab_id": 5, "dir": str(tmp_path / "labdesk-lab-5")}
        assert connector.observe(handle).state == ObservedState.GONE
        connector.delete(handle)
        with pytest.raises(PermanentError):
            connector.suspend(handle)
        with pytest.raises(PermanentError):
            connector.endpoints(handle)

    def test_a_handle_that_is_not_a_lab_directory_is_refused(self, tmp_path: Path) -> None:
        precious = tmp_path / "precious"
        precious.mkdir()
        with pytest.raises(PermanentError):
            make_connector(tmp_path).delete({"lab_id": 5, "dir": str(precious)})
        assert precious.exists()


# -- pure helpers -------------------------------------------------------------------------------------
class TestProcStat:
    def test_a_command_name_with_spaces_and_parentheses_parses(self) -> None:
        parsed = processes.parse_stat("4242 (we (ird) name) T 1 4200 4200 0 -1 4194560 0 0")
        assert parsed == processes.ProcStat(pid=4242, state="T", pgid=4200)
        assert parsed.alive and parsed.stopped

    def test_zombies_count_as_dead(self) -> None:
        assert not processes.ProcStat(1, "Z", 1).alive
        assert not processes.ProcStat(1, "X", 1).alive
        assert processes.ProcStat(1, "S", 1).alive and not processes.ProcStat(1, "S", 1).stopped

    def test_live_members_are_the_groups_non_zombies(self) -> None:
        stats = [processes.ProcStat(1, "S", 9), processes.ProcStat(2, "Z", 9), processes.ProcStat(3, "S", 8)]
        assert [m.pid for m in processes.live_members(9, stats)] == [1]

    def test_groups_zero_and_one_are_never_ours(self) -> None:
        assert processes.group(0, "X=y") == [] and processes.group(1, "X=y") == []
        assert processes.signal_group(0, 0) is False and processes.signal_group(1, 0) is False

    def test_a_group_without_our_marker_is_a_stranger(self) -> None:
        mine = os.getpgid(0)
        assert processes.group(mine, "LABDESK_LAB_DIR=/nowhere") == []


class TestDisplays:
    def test_the_first_free_display_skips_taken_ones(self) -> None:
        assert displays.first_free(set()) == 100
        assert displays.first_free({100, 101, 103}) == 102
        with pytest.raises(OSError):
            displays.first_free({100, 101}, first=100, last=101)

    def test_display_numbers_come_from_lock_files_and_sockets(self) -> None:
        names = ["X0", ".X100-lock", ".font-unix", "X11-unix", "Xfoo"]
        sockets = ["@/tmp/.X11-unix/X101", "/run/user/1000/bus", "/tmp/.X11-unix/X102"]
        assert displays.numbers(names, sockets) == {0, 100, 101, 102}

    def test_in_use_reads_a_tmp_directory(self, tmp_path: Path) -> None:
        (tmp_path / ".X11-unix").mkdir()
        (tmp_path / ".X11-unix" / "X105").touch()
        (tmp_path / ".X106-lock").touch()
        assert displays.in_use(tmp_path, tmp_path / "no-net-unix") == {105, 106}

    def test_stale_lock_files_of_a_dead_server_are_cleared(self, tmp_path: Path) -> None:
        (tmp_path / ".X11-unix").mkdir()
        (tmp_path / ".X11-unix" / "X105").touch()
        (tmp_path / ".X105-lock").write_text(f"{2**22 + 1:>10}\n")  # above pid_max: dead
        (tmp_path / ".X106-lock").write_text(f"{os.getpid():>10}\n")
        displays.clear_stale(105, tmp_path)
        displays.clear_stale(106, tmp_path)
        assert displays.in_use(tmp_path, tmp_path / "no-net-unix") == {106}


class TestSecrets:
    def test_passwords_are_random_and_fit_vnc(self) -> None:
        passwords = {new_password() for _ in range(50)}
        assert len(passwords) == 50
        assert all(len(p) == 8 and p.isascii() for p in passwords)

    def test_the_password_file_is_private(self, tmp_path: Path) -> None:
        write_password(tmp_path / "pw", "s3cret")
        assert stat.S_IMODE((tmp_path / "pw").stat().st_mode) == 0o600
        assert read_password(tmp_path / "pw") == "s3cret"

    def test_the_record_holds_no_password(self, tmp_path: Path) -> None:
        record = labs.LabRecord(1, 100, 5901, 42, 43, str(tmp_path / "vncpasswd"))
        labs.write_record(tmp_path, record)
        assert labs.read_record(tmp_path) == record
        assert set(json.loads((tmp_path / "lab.json").read_text())) == {
            "lab_id", "display", "port", "pgid", "pid", "password_file"
        }

    def test_an_xauthority_entry_is_wild_for_its_display(self) -> None:
        data = xauth.entry(123, b"\x01" * 16)
        assert data == (b"\xff\xff" + b"\x00\x00" + b"\x00\x03123" + b"\x00\x12MIT-MAGIC-COOKIE-1"
                        + b"\x00\x10" + b"\x01" * 16)

    def test_the_vnc_key_reverses_each_bit(self) -> None:
        assert rfb.vnc_key("\x01\x80") == b"\x80\x01" + b"\0" * 6


class TestLabDirectories:
    def test_records_list_only_directories_with_a_lab_json(self, tmp_path: Path) -> None:
        (tmp_path / "labdesk-lab-1").mkdir()
        (tmp_path / "labdesk-lab-2").mkdir()
        (tmp_path / "other").mkdir()
        labs.write_record(tmp_path / "labdesk-lab-2", labs.LabRecord(2, 100, 5901, 42, 43, "pw"))
        assert [r.lab_id for _, r in labs.records(tmp_path)] == [2]
        assert [m.lab_id for m in make_connector(tmp_path).list_managed()] == [2]

    def test_the_desktop_environment_is_built_from_scratch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://secret")
        env = Desktop(Path("/s/labdesk-lab-1"), 100, 5901, "/usr/bin/Xvfb", "/usr/bin/x11vnc").env()
        assert "DATABASE_URL" not in env
        assert env["LABDESK_LAB_DIR"] == "/s/labdesk-lab-1"
        assert env["XAUTHORITY"] == "/s/labdesk-lab-1/Xauthority"


class TestNetwork:
    def test_a_free_port_avoids_reserved_ones(self) -> None:
        first = free_port("127.0.0.1", set())
        assert free_port("127.0.0.1", {first}) != first

    def test_a_silent_listener_is_not_a_vnc_server(self) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            assert not speaks_rfb("127.0.0.1", silent.getsockname()[1], timeout=0.3)
