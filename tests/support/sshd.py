"""A real OpenSSH server on loopback, for tests that reach a "lab" over SSH.

`Sshd()` starts /usr/sbin/sshd on 127.0.0.1:<free port> with a host key of its own, public keys only and
no PAM, so it needs no changes to the machine's own sshd and trusts nothing but the keys a test gives
it. `add_user` creates a throwaway local account (useradd) and authorizes one public key for it; on
`stop` (or leaving the `with` block) every process of those accounts and the sshd are ended by PID and
the accounts are deleted (userdel --remove). It needs root, for sshd and for useradd.

The authorized keys live in a directory of the server's own (`AuthorizedKeysFile <dir>/%u`), not in
the users' ~/.ssh, and there is no `Subsystem sftp` line, so SFTP is off, as on a locked-down lab.
`StrictModes no`: that directory lives under /tmp, which is world-writable, and StrictModes checks every
parent directory of a key file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.support.http import free_port
from tests.support.processes import stop_process

SSHD = "/usr/sbin/sshd"
TOOLS = ("useradd", "usermod", "userdel", "ps")


def sshd_unavailable_reason() -> str | None:
    """Why a real sshd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to run sshd and create throwaway users"
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server; scripts/test installs it)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install passwd procps)"
    return None


def generate_key_pair(kind: str = "ed25519") -> tuple[str, str]:
    """A new key pair: (OpenSSH private key text, `ssh-ed25519 AAAA…` public key line).

    `kind` is "ed25519", "ecdsa" (P-256) or "rsa" (3072 bits).
    """
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


class Sshd:
    """One sshd process on 127.0.0.1:`port`; a context manager. Raises RuntimeError if it does not start."""

    host = "127.0.0.1"

    def __init__(self, start_timeout: float = 10.0) -> None:
        reason = sshd_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.dir = Path(tempfile.mkdtemp(prefix="ldtest-sshd-"))
        self.dir.chmod(0o755)  # sshd reads the authorized keys as the user
        self.keys_dir = self.dir / "authorized_keys"
        self.keys_dir.mkdir(mode=0o755)
        self.log_path = self.dir / "sshd.log"
        self.users: list[str] = []
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Sshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """What sshd wrote so far (`-e`: its log goes to stderr, kept in `log_path`)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def add_user(
        self, name: str | None = None, public_key: str | None = None, shell: str = "/bin/bash", key_options: str = ""
    ) -> str:
        """Create a throwaway user (home directory included) who may log in with `public_key`
        (with `key_options`, see `authorize`)."""
        name = name or f"ldtest{secrets.token_hex(3)}"
        subprocess.run(["useradd", "--create-home", "--shell", shell, name], check=True, capture_output=True)
        self.users.append(name)
        # No password, but not locked: sshd without PAM refuses accounts whose password starts with "!".
        subprocess.run(["usermod", "--password", "*", name], check=True, capture_output=True)
        if public_key:
            self.authorize(name, public_key, key_options)
        return name

    def authorize(self, name: str, public_key: str, options: str = "") -> None:
        """Add one more public key (an `ssh-ed25519 AAAA…` line) that may log in as `name`.

        `options` is the authorized_keys options prefix, e.g. `restrict,command="/path/to/grader-run"`:
        sshd then runs that command whatever the client asks, with the request in SSH_ORIGINAL_COMMAND,
        as a `ForceCommand` does.
        """
        keys = self.keys_dir / name
        with keys.open("a") as file:
            file.write((f"{options} " if options else "") + public_key.strip() + "\n")
        keys.chmod(0o644)

    def remove_user(self, name: str) -> None:
        """End every process of `name` (one of ours), then delete the account and its keys."""
        end_user_processes(name)
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        (self.keys_dir / name).unlink(missing_ok=True)
        self.users.remove(name)

    def stop(self) -> None:
        """End the users' processes, then sshd (by PID), delete the users and the server's directory."""
        for name in self.users:
            end_user_processes(name)
        if self._process is not None:
            stop_process(self._process)
            self._process = None
        for name in self.users:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        self.users = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self, timeout: float) -> None:
        host_key = self.dir / "host_key"
        host_key.write_text(generate_key_pair()[0])
        host_key.chmod(0o600)  # sshd refuses a host key others can read
        config = self.dir / "sshd_config"
        config.write_text(self._config(host_key))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
        self._wait_listening(timeout)

    def _config(self, host_key: Path) -> str:
        return f"""Port {self.port}
ListenAddress {self.host}
HostKey {host_key}
PidFile {self.dir / 'sshd.pid'}
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {self.keys_dir}/%u
StrictModes no
PermitTTY yes
PrintMotd no
PrintLastLog no
"""

    def _wait_listening(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self._process.returncode}: {self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen on {self.host}:{self.port} within {timeout} s")
                time.sleep(0.05)


def end_user_processes(name: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of the (throwaway) user `name`, by PID."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in user_pids(name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while user_pids(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not user_pids(name):
            return


def user_pids(name: str) -> list[int]:
    """The user's live processes; zombies (already ended, waiting for PID 1 to reap them) do not count."""
    result = subprocess.run(["ps", "-u", name, "-o", "pid=,stat="], capture_output=True, text=True)
    rows = (line.split() for line in result.stdout.splitlines())
    return [int(row[0]) for row in rows if len(row) == 2 and not row[1].startswith("Z")]
