"""The lab image's SSH behaviour, for real: a profile ending with `exec screen -xRR` makes every
connection reattach to one screen session (issue 5, docs/images.md "SSH sessions resume").

A throwaway local user gets EXACTLY the snippet the recipe ships (files/profile-screen.sh) as its
~/.profile; a real sshd on loopback (own host key, keys only, no PAM) is reached twice with `ssh -tt`
through a pty. The first connection types a marker and is killed; the second must show the first's
output (the same screen window) and the marker variable (the same shell), and `screen -ls` must list
exactly one session. Every process started here and the user are removed afterwards.
"""

from __future__ import annotations

import os
import pty
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.http import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "desktop-images/recipes/debian-lab/files/profile-screen.sh"
SSHD = "/usr/sbin/sshd"
ANSI = re.compile(rb"\x1b(\[[0-9;?>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMc])")


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a throwaway user and run sshd"
    if not os.path.exists(SSHD):
        return "sshd is missing (apt-get install openssh-server; scripts/test installs it)"
    for tool in ("screen", "ssh", "ssh-keygen", "useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install openssh-server screen)"
    return None


class PtySsh:
    """`ssh -tt` on a pty of its own, read without blocking."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = dict(os.environ, TERM="xterm")
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.output = b""

    def text(self) -> str:
        return ANSI.sub(b"", self.output).replace(b"\r", b"").decode(errors="replace")

    def read_until(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen within {timeout}s; output:\n{self.text()[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the ssh client exited
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"ssh ended before {needle!r}; output:\n{self.text()[-2000:]}")
                self.output += chunk

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def kill(self) -> None:
        """Drop the connection abruptly: SIGKILL the client, as a lost network or a closed laptop would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        try:
            os.close(self.master)
        except OSError:
            pass


@pytest.fixture
def lab_user() -> Iterator[str]:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    name = f"ldtest{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        # No password, but not locked: sshd without PAM refuses accounts whose password starts with "!".
        subprocess.run(["usermod", "--password", "*", name], check=True)
        home = Path(pwd.getpwnam(name).pw_dir)
        profile = home / ".profile"
        profile.write_bytes(SNIPPET.read_bytes())
        for other in (".bash_profile", ".bash_login"):
            (home / other).unlink(missing_ok=True)
        shutil.chown(profile, name, name)
        yield name
    finally:
        _end_user_processes(name)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def _end_user_processes(name: str) -> None:
    """Quit the user's screen sessions, then end (by PID) what this test's sshd started for the user."""
    subprocess.run(["runuser", "-u", name, "--", "screen", "-wipe"], capture_output=True)
    for session in _screen_sessions(name):
        subprocess.run(["runuser", "-u", name, "--", "screen", "-S", session, "-X", "quit"], capture_output=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _user_pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while _user_pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)


def _user_pids(name: str) -> list[int]:
    result = subprocess.run(["ps", "-u", name, "-o", "pid="], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def _screen_sessions(name: str) -> list[str]:
    result = subprocess.run(["runuser", "-u", name, "--", "screen", "-ls"], capture_output=True, text=True)
    return re.findall(r"^\s+(\d+\.\S+)\s", result.stdout, flags=re.MULTILINE)


@pytest.fixture
def sshd(lab_user: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real sshd on 127.0.0.1:<free port>, keys only, trusting one generated key for `lab_user`."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "client_key")], check=True)
    # sshd reads AuthorizedKeysFile as the user, so that directory must be reachable by them.
    keys_dir = Path(tempfile.mkdtemp(prefix="ldtest-keys-"))
    keys_dir.chmod(0o755)
    keys = keys_dir / "authorized_keys"
    keys.write_text((tmp_path / "client_key.pub").read_text())
    keys.chmod(0o644)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    screen_dir = Path("/run/screen")  # normally made by systemd-tmpfiles (screen-cleanup.conf)
    if not screen_dir.exists():
        screen_dir.mkdir()
        screen_dir.chmod(0o777)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {tmp_path / 'host_key'}
PidFile {tmp_path / 'sshd.pid'}
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {keys}
StrictModes no
AllowUsers {lab_user}
PermitTTY yes
PrintMotd no
PrintLastLog no
"""
    )
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(tmp_path / "sshd.log", "wb"))
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                pytest.fail(f"sshd exited: {(tmp_path / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("sshd did not listen within 10 s")
                time.sleep(0.1)
        yield port, tmp_path / "client_key"
    finally:
        _end_user_processes(lab_user)  # the sessions, before the sshd that spawned them
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(keys_dir, ignore_errors=True)


def _ssh(user: str, port: int, key: Path) -> PtySsh:
    return PtySsh([
        "ssh", "-tt", "-p", str(port), "-i", str(key),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        f"{user}@127.0.0.1",
    ])


def test_a_dropped_ssh_connection_reattaches_to_the_same_screen_session(lab_user, sshd):
    port, key = sshd
    mark = secrets.token_hex(4)
    first = _ssh(lab_user, port, key)
    try:
        first.read_until(f"{lab_user}@")  # the shell's prompt, inside screen
        first.type(f"export MARK={mark}; echo first-$MARK")
        first.read_until(f"first-{mark}")
        assert _screen_sessions(lab_user) and len(_screen_sessions(lab_user)) == 1
    finally:
        first.kill()  # abruptly: no exit, no detach key

    second = _ssh(lab_user, port, key)
    try:
        # screen redraws the window: the first connection's output is on the screen again…
        second.read_until(f"first-{mark}")
        # …and it is the same shell, which still has the variable.
        second.type("echo second-$MARK")
        second.read_until(f"second-{mark}")
        sessions = _screen_sessions(lab_user)
        assert len(sessions) == 1, f"expected one screen session, screen -ls shows {sessions}"
    finally:
        second.kill()
    assert len(_screen_sessions(lab_user)) == 1
