"""`ports.choose` (free host ports for a lab's forwarded ports) and `LabDir` (one directory per lab: atomic
records, a lock across processes, a key file only for one call, spare copies). Local only: sockets on
loopback, files under tmp_path, one short-lived `python -c` holding a lock."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import pytest

from broker.errors import CapacityError
from connectors.vagrant import ports
from connectors.vagrant.labdir import Busy, LabDir, all_in

REPO = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"


# -- ports ----------------------------------------------------------------------------------------------------
def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                return False
    return True


@pytest.fixture
def block() -> int:
    """The first of 6 consecutive ports free right now on loopback (TCP and UDP)."""
    for _ in range(200):
        base = random.randrange(30000, 60000)
        if all(_free(port) for port in range(base, base + 6)):
            return base
    pytest.skip("no 6 consecutive free ports found on loopback")


@pytest.fixture
def hold() -> Iterator:
    with ExitStack() as stack:
        def bind(port: int, kind: int = socket.SOCK_STREAM, address: str = HOST) -> None:
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen()
        yield bind


def test_choose_gives_the_lowest_free_ports_in_order(block: int) -> None:
    assert ports.choose(["SSH_PORT", "RDP_PORT"], block, block + 5, set(), HOST) == {
        "SSH_PORT": block, "RDP_PORT": block + 1}


def test_choose_skips_ports_other_labs_recorded(block: int) -> None:
    chosen = ports.choose(["SSH_PORT", "RDP_PORT"], block, block + 5, {block, block + 2}, HOST)
    assert chosen == {"SSH_PORT": block + 1, "RDP_PORT": block + 3}


def test_choose_skips_ports_bound_by_someone_else(block: int, hold) -> None:
    hold(block)                                   # TCP, listening on loopback
    hold(block + 1, socket.SOCK_DGRAM)            # UDP only: a tunnel port must be free for UDP too
    hold(block + 2, address="0.0.0.0")            # on every address, loopback included
    chosen = ports.choose(["SSH_PORT", "VNC_PORT"], block, block + 5, set(), HOST)
    assert chosen == {"SSH_PORT": block + 3, "VNC_PORT": block + 4}


def test_choose_never_gives_one_port_twice(block: int) -> None:
    chosen = ports.choose([f"P{n}_PORT" for n in range(6)], block, block + 5, set(), HOST)
    assert sorted(chosen.values()) == list(range(block, block + 6))


def test_choose_raises_capacity_error_when_the_range_runs_out(block: int, hold) -> None:
    hold(block + 1)
    with pytest.raises(CapacityError) as caught:
        ports.choose(["SSH_PORT"], block, block + 1, {block}, HOST)
    assert f"{block}-{block + 1}" in str(caught.value)  # the admin sees which range is exhausted
    assert str(block) not in caught.value.user_message  # the learner is told to wait, not about ports
    with pytest.raises(CapacityError):
        ports.choose(["SSH_PORT", "RDP_PORT", "VNC_PORT"], block, block + 1, set(), HOST)


def test_choose_with_no_names_needs_no_port(block: int) -> None:
    assert ports.choose([], block, block, {block}, HOST) == {}


# -- LabDir: records --------------------------------------------------------------------------------------------
@pytest.fixture
def lab(tmp_path: Path) -> LabDir:
    lab = LabDir.of(tmp_path / "state", 7)
    lab.path.mkdir(parents=True)
    return lab


def test_of_names_the_directory_and_machine(tmp_path: Path) -> None:
    lab = LabDir.of(tmp_path, 42)
    assert lab.path == tmp_path / "labdesk-lab-42"
    assert lab.lab_id == 42
    assert lab.machine == "labdesk-lab-42"


def test_write_read_update(lab: LabDir) -> None:
    assert lab.read() == {}
    assert not lab.exists()
    lab.write({"box": "lab/tiny", "ports": {"SSH_PORT": 42000}})
    assert lab.exists()
    assert lab.read() == {"box": "lab/tiny", "ports": {"SSH_PORT": 42000}}
    assert lab.update(suspended=True) == {"box": "lab/tiny", "ports": {"SSH_PORT": 42000}, "suspended": True}
    assert lab.read()["suspended"] is True
    lab.update("up.json", state="running")
    assert lab.read("up.json") == {"state": "running"}
    assert "state" not in lab.read()
    assert sorted(p.name for p in lab.path.iterdir()) == ["lab.json", "up.json"]  # no scratch file left


def test_a_reader_never_sees_half_a_record(lab: LabDir) -> None:
    lab.write({"n": -1})
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        n = 0
        try:
            while not stop.is_set():
                # sizes that vary a lot, so a torn or truncated file would show
                lab.write({"n": n, "pad": "x" * random.choice((0, 10, 70_000, 300_000))})
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            data = lab.read()  # json.JSONDecodeError here would be a partial file
            assert isinstance(data.get("n"), int), data.keys()
            reads += 1
    finally:
        stop.set()
        thread.join(10)
    assert not failures
    assert reads > 10


# -- LabDir: the lock ------------------------------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from connectors.vagrant.labdir import LabDir
with LabDir(Path(sys.argv[1])).locked(5):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_lock_serialises_across_processes(lab: LabDir) -> None:
    assert not lab.busy()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lab.path), "1.5"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        held_at = time.monotonic()
        assert lab.busy()
        started = time.monotonic()
        with pytest.raises(Busy):
            with lab.locked(timeout=0.2):
                pytest.fail("got a lock another process holds")
        assert time.monotonic() - started < 1.0
        with lab.locked(timeout=5):
            waited = time.monotonic() - held_at
            assert holder.wait(timeout=5) == 0  # the holder is done by the time we hold the lock
            assert waited >= 1.0, waited  # we waited for it (~1.5 s), not got it at once
            # and while we hold it, another process cannot take it
            probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path\n"
                                    "from connectors.vagrant.labdir import LabDir\n"
                                    "print(LabDir(Path(sys.argv[1])).busy())", str(lab.path)],
                                   cwd=REPO, capture_output=True, text=True, timeout=20)
            assert probe.stdout.strip() == "True", probe.stderr
        assert not lab.busy()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_busy_of_a_lost_directory_is_false(tmp_path: Path) -> None:
    assert LabDir.of(tmp_path, 1).busy() is False


# -- LabDir: the key file ------------------------------------------------------------------------------------
def test_the_key_file_exists_only_for_the_block_and_only_for_its_owner(lab: LabDir) -> None:
    with lab.key_file("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n") as env:
        path = Path(env["LABDESK_SSH_KEY"])
        assert path.is_relative_to(lab.path)
        assert path.read_text() == "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert not path.exists()


def test_the_key_file_is_removed_on_an_exception(lab: LabDir) -> None:
    with pytest.raises(RuntimeError):
        with lab.key_file("secret") as env:
            path = Path(env["LABDESK_SSH_KEY"])
            raise RuntimeError("vagrant failed")
    assert not path.exists()


def test_no_key_means_no_file(lab: LabDir) -> None:
    with lab.key_file(None) as env:
        assert env == {}
    assert not (lab.path / ".keys").exists() or not any((lab.path / ".keys").iterdir())


def test_two_calls_get_two_key_files(lab: LabDir) -> None:
    with lab.key_file("a") as first, lab.key_file("b") as second:
        assert first["LABDESK_SSH_KEY"] != second["LABDESK_SSH_KEY"]
        assert Path(first["LABDESK_SSH_KEY"]).read_text() == "a"
        assert Path(second["LABDESK_SSH_KEY"]).read_text() == "b"


# -- all_in, spares, remove -----------------------------------------------------------------------------------
def test_all_in_lists_only_lab_directories_by_id(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for name in ("labdesk-lab-10", "labdesk-lab-2", "labdesk-lab-1", "labdesk-lab-x", "labdesk-lab-3.bak",
                 "other", ".spares", "labdesk-lab-", "Labdesk-lab-5"):
        (state / name).mkdir(parents=True)
    (state / "labdesk-lab-4").write_text("a file, not a directory")
    assert [lab.lab_id for lab in all_in(state)] == [1, 2, 10]
    assert all_in(tmp_path / "missing") == []


@pytest.fixture
def made(lab: LabDir) -> LabDir:
    """A lab directory as Vagrant leaves it once the machine exists."""
    (lab.path / "Vagrantfile").write_text("Vagrant.configure('2') { }\n")
    lab.write({"box": "lab/tiny"})
    machine = lab.path / ".vagrant" / "machines" / lab.machine / "libvirt"
    machine.mkdir(parents=True)
    (machine / "id").write_text("2f1c9d")
    lab.log("1,lab,action,up,start")
    (lab.path / ".lock").write_text("")
    (lab.path / ".keys").mkdir()
    (lab.path / ".keys" / "123-456").write_text("secret key")
    (lab.path / ".lab.json.999").write_text("{half")
    return lab


def test_keep_spare_copies_what_destroying_the_machine_needs_and_no_secrets_or_logs(made: LabDir) -> None:
    made.keep_spare()
    spare = made.spare
    assert not spare.is_relative_to(made.path)
    assert (spare / "Vagrantfile").read_text() == "Vagrant.configure('2') { }\n"
    assert json.loads((spare / "lab.json").read_text()) == {"box": "lab/tiny"}
    assert (spare / ".vagrant" / "machines" / made.machine / "libvirt" / "id").read_text() == "2f1c9d"
    for left_out in ("vagrant.log", ".lock", ".keys", ".lab.json.999"):
        assert not (spare / left_out).exists(), left_out
    assert [lab.lab_id for lab in all_in(made.path.parent)] == [made.lab_id]  # the spare is not another lab


def test_keep_spare_again_replaces_the_old_copy(made: LabDir) -> None:
    made.keep_spare()
    (made.path / "Vagrantfile").write_text("new\n")
    made.keep_spare()
    assert (made.spare / "Vagrantfile").read_text() == "new\n"


def test_restore_from_spare(made: LabDir) -> None:
    assert not made.restore_from_spare()  # no spare yet
    made.keep_spare()
    assert not made.restore_from_spare()  # the directory is there: nothing to restore
    assert (made.path / "vagrant.log").exists()
    import shutil
    shutil.rmtree(made.path)
    assert made.restore_from_spare()
    assert (made.path / "Vagrantfile").read_text() == "Vagrant.configure('2') { }\n"
    assert made.read() == {"box": "lab/tiny"}
    assert made.exists()


def test_remove_removes_the_directory_and_its_spare(made: LabDir) -> None:
    made.keep_spare()
    made.remove()
    assert not made.path.exists() and not made.spare.exists()
    made.remove()  # a lab already gone is fine
    assert all_in(made.path.parent) == []


def test_the_log_is_appended_line_by_line(lab: LabDir) -> None:
    lab.log("first")
    lab.log("second\n")
    assert (lab.path / "vagrant.log").read_text() == "first\nsecond\n"
    assert os.path.getsize(lab.path / "vagrant.log") == len("first\nsecond\n")
