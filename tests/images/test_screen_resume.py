"""The lab image's SSH behaviour, for real: a profile ending with `exec screen -xRR` makes every
connection reattach to one screen session (issue 5, docs/images.md "SSH sessions resume").

A throwaway local user gets EXACTLY the snippet the recipe ships (files/profile-screen.sh) as its
~/.profile; a real sshd on loopback (tests/support/sshd.py: own host key, keys only, no PAM) is reached
twice with `ssh -tt` through a pty. The first connection types a marker and is killed; the second must show the first's
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
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.sshd import Sshd, generate_key_pair, sshd_unavailable_reason

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "desktop-images/recipes/debian-lab/files/profile-screen.sh"
ANSI = re.compile(rb"\x1b(\[[0-9;?>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMc])")


def _requirements() -> str | None:
    reason = sshd_unavailable_reason()
    if reason:
        return reason
    for tool in ("screen", "ssh", "runuser"):
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
def sshd() -> Iterator[Sshd]:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    screen_dir = Path("/run/screen")  # normally made by systemd-tmpfiles (screen-cleanup.conf)
    if not screen_dir.exists():
        screen_dir.mkdir()
        screen_dir.chmod(0o777)
    with Sshd() as server:
        yield server


@pytest.fixture
def lab_login(sshd: Sshd, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A throwaway user whose ~/.profile is the recipe's snippet, and the private key that logs in as them."""
    private, public = generate_key_pair()
    key = tmp_path / "client_key"
    key.write_text(private)
    key.chmod(0o600)
    name = sshd.add_user(public_key=public)
    try:
        home = Path(pwd.getpwnam(name).pw_dir)
        profile = home / ".profile"
        profile.write_bytes(SNIPPET.read_bytes())
        for other in (".bash_profile", ".bash_login"):
            (home / other).unlink(missing_ok=True)
        shutil.chown(profile, name, name)
        yield name, key
    finally:
        _quit_screen_sessions(name)
        sshd.remove_user(name)  # ends the rest of the user's processes, by PID


def _quit_screen_sessions(name: str) -> None:
    subprocess.run(["runuser", "-u", name, "--", "screen", "-wipe"], capture_output=True)
    for session in _screen_sessions(name):
        subprocess.run(["runuser", "-u", name, "--", "screen", "-S", session, "-X", "quit"], capture_output=True)


def _screen_sessions(name: str) -> list[str]:
    result = subprocess.run(["runuser", "-u", name, "--", "screen", "-ls"], capture_output=True, text=True)
    return re.findall(r"^\s+(\d+\.\S+)\s", result.stdout, flags=re.MULTILINE)


def _ssh(user: str, port: int, key: Path) -> PtySsh:
    return PtySsh([
        "ssh", "-tt", "-p", str(port), "-i", str(key),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        f"{user}@127.0.0.1",
    ])


def test_a_dropped_ssh_connection_reattaches_to_the_same_screen_session(sshd, lab_login):
    user, key = lab_login
    port = sshd.port
    mark = secrets.token_hex(4)
    first = _ssh(user, port, key)
    try:
        first.read_until(f"{user}@")  # the shell's prompt, inside screen
        first.type(f"export MARK={mark}; echo first-$MARK")
        first.read_until(f"first-{mark}")
        assert _screen_sessions(user) and len(_screen_sessions(user)) == 1
    finally:
        first.kill()  # abruptly: no exit, no detach key

    second = _ssh(user, port, key)
    try:
        # screen redraws the window: the first connection's output is on the screen again…
        second.read_until(f"first-{mark}")
        # …and it is the same shell, which still has the variable.
        second.type("echo second-$MARK")
        second.read_until(f"second-{mark}")
        sessions = _screen_sessions(user)
        assert len(sessions) == 1, f"expected one screen session, screen -ls shows {sessions}"
    finally:
        second.kill()
    assert len(_screen_sessions(user)) == 1
