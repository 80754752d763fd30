"""Run a script on a lab's machine over SSH: connectors' hook scripts (before suspend, after resume,
before delete) and grading hooks' check scripts (grading_hooks.ssh).

A leaf of the broker package so that both connectors and grading hooks may import it (.importlinter);
no other broker module imports it, so the broker core stays free of paramiko.

`run_script` sends the script's text on the command's stdin, and one remote command copies it to a
fresh `mktemp` file, runs it, and removes it again:

    f=$(mktemp …) || exit; cat >"$f" && chmod 700 "$f" && "$f" "$@" </dev/null; s=$?; rm -f "$f"; exit $s

Why copy-run-remove rather than a script kept on the lab: the lab is the learner's machine for the
rest of its life, so a script left there could be read or replaced before its next run (a check that
always passes); a copy made a moment before it runs, readable only by the account LabDesk logs in as
(mode 700), and deleted afterwards, cannot. Why stdin rather than SFTP or scp: it works on every sshd,
including locked-down ones with the SFTP subsystem turned off. Why a file rather than `sh -s`: the
script's own `#!` line is honoured, so a Python check runs under Python; a script without one gets
`#!/bin/sh`. The wrapper itself runs under `/bin/sh`, whatever the account's login shell is.

`remote_command` replaces the wrapper for accounts whose sshd forces a command of its own (the image's
`grader` account forces `grader-run`, which would refuse the wrapper): the command is sent as
`<remote_command> <args…>` (each argument shell-quoted) with the script on stdin, and must copy, run and
remove the script itself, as `grader-run run-script` does in the grader's private directory. Output
limits work the same, and `timeout` still bounds the call, but the command must also enforce the time
limit itself: sshd refuses the "signal" request for a forced-command session ("refusing to send signal
TERM to forced-command session" in its log), so a script it runs cannot be stopped from here
(grading_hooks.ssh passes `--timeout=` to grader-run, which uses coreutils `timeout`).

Time-outs: `timeout` bounds the whole call, connecting included. When it expires, LabDesk asks sshd to
send SIGTERM to the script's process group (the SSH "signal" request, honoured by OpenSSH 7.9 and
later; sshd starts every command in a session of its own), SIGKILL after `KILL_GRACE` seconds if the
script is still there, then closes the channel. Closing alone is not enough: without a pty, sshd
signals nothing when a channel closes, so a sleeping script would live on. After SIGKILL the wrapper
cannot remove the copy, so a second command removes it by its name. A process the script moved to a
session of its own (setsid, a daemon) is out of reach, as it is meant to be.

Output: stdout and stderr are read together as they arrive, so a script flooding one cannot stall on
the other; at most `output_limit` bytes of each are kept and the rest is read and dropped
(`truncated`). Failures to reach or log in to the lab raise `TransientError`, whose message names
`user@host:port` and the cause (its `user_message`, for learners, names neither); the private key is
never logged or put in a message.
"""

from __future__ import annotations

import io
import logging
import secrets
import select
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Sequence

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from broker.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL once the time-out expired
EXIT_LINGER = 2.0  # seconds to wait for the end of the output once the script has exited
CHUNK = 65536
KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
USER_MESSAGE = "LabDesk could not reach the lab machine. Please try again in a moment."

# $@ are the script's arguments; TOKEN makes the copy's name known to LabDesk (see _remove_copy).
WRAPPER = """f=$(mktemp "${TMPDIR:-/tmp}/labdesk-script-TOKEN.XXXXXXXXXX") || exit
trap 'rm -f "$f"; exit 143' HUP INT TERM
cat >"$f" && chmod 700 "$f" && "$f" "$@" </dev/null
s=$?; rm -f "$f"; exit $s
"""


@dataclass(frozen=True)
class SshTarget:
    """Where to run: a lab's SSH address and the account LabDesk logs in to it with."""

    host: str
    port: int
    user: str
    private_key: str  # OpenSSH-format private key text (Ed25519 usually; ECDSA and RSA work too)
    connect_timeout: float = 10.0

    def __repr__(self) -> str:  # keeps the key out of logs and tracebacks
        return f"SshTarget({self.address!r})"

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ScriptResult:
    exit_status: int | None  # None when timed out; -1 if the lab ended the command without a status
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool  # output beyond the limit was dropped

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out


class _AcceptUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Accept the lab's host key without checking or saving it.

    A lab is a fresh VM whose host key was made at its first boot, and LabDesk has no trusted channel
    to learn it beforehand, so there is nothing to check it against; saving it would only break the
    next lab built at the same address. What this risks: someone able to intercept the lab network
    could see the script and forge its output. They cannot log in to the real lab with our key (a
    public-key signature is bound to its own SSH session).
    """

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.debug("ssh %s: accepting host key %s %s", hostname, key.get_name(), key.fingerprint)


class CappedOutput:
    """At most `limit` bytes of one stream; counts what it drops."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = max(self.limit - len(self.data), 0)
        self.data += chunk[:room]
        self.dropped += max(len(chunk) - room, 0)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def run_script(
    target: SshTarget,
    script: str,
    timeout: float,
    *,
    args: Sequence[str] = (),
    output_limit: int = 65536,
    remote_command: str | None = None,
) -> ScriptResult:
    """Copy `script` to the lab, run it with `args`, remove it; `timeout` bounds the whole call.

    With `remote_command` (e.g. "run-script" for a forced `grader-run`), that command receives the
    script on stdin instead of the copy-run-remove wrapper (see the module's docstring).

    Raises TransientError when the lab cannot be reached or refuses the key, or the connection drops,
    and PermanentError when `target.private_key` is not a usable private key.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    deadline = time.monotonic() + timeout
    client = _connect(target, _load_key(target), min(target.connect_timeout, timeout))
    try:
        command = _command(secrets.token_hex(8), args, remote_command)
        return _run(client, target, _with_shebang(script), command, deadline, output_limit)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise _transient(target, f"connection lost: {_cause(exc)}") from exc
    finally:
        client.close()


def _with_shebang(script: str) -> bytes:
    return (script if script.startswith("#!") else "#!/bin/sh\n" + script).encode()


@dataclass(frozen=True)
class _Command:
    line: str  # what the SSH "exec" request sends
    token: str | None  # names the wrapper's copy (see _remove_copy); None when the command removes its own


def _command(token: str, args: Sequence[str], remote_command: str | None = None) -> _Command:
    if remote_command is not None:
        return _Command(" ".join([remote_command, *map(shlex.quote, args)]), None)
    wrapper = WRAPPER.replace("TOKEN", token)
    line = " ".join(["exec /bin/sh -c", shlex.quote(wrapper), "labdesk-script", *map(shlex.quote, args)])
    return _Command(line, token)


def _load_key(target: SshTarget) -> paramiko.PKey:
    for key_class in KEY_CLASSES:
        try:
            return key_class.from_private_key(io.StringIO(target.private_key))
        except paramiko.PasswordRequiredException:
            raise PermanentError(f"ssh {target.address}: the private key is encrypted", USER_MESSAGE) from None
        except (paramiko.SSHException, ValueError):
            continue
    raise PermanentError(f"ssh {target.address}: not an Ed25519, ECDSA or RSA private key", USER_MESSAGE)


def _connect(target: SshTarget, pkey: paramiko.PKey, timeout: float) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_AcceptUnknownHostKey())
    try:
        client.connect(
            target.host,
            target.port,
            username=target.user,
            pkey=pkey,
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
    except Exception as exc:
        client.close()
        raise _transient(target, _connect_cause(exc, timeout)) from exc
    return client


def _connect_cause(exc: Exception, timeout: float) -> str:
    if isinstance(exc, paramiko.BadAuthenticationType):
        return f"authentication failed (the server allows only {', '.join(exc.allowed_types)})"
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed (publickey)"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {_cause(error) for error in exc.errors.values()}
        return "cannot connect: " + "; ".join(sorted(causes))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out connecting (after {timeout:g} s)"
    if isinstance(exc, paramiko.SSHException):
        return f"SSH handshake failed: {exc}"  # e.g. no banner yet: a booting lab whose sshd is not up
    return f"cannot connect: {_cause(exc)}"


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]  # "connection refused", "no route to host"
    return str(exc) or type(exc).__name__


def _transient(target: SshTarget, cause: str) -> TransientError:
    return TransientError(f"ssh {target.address}: {cause}", USER_MESSAGE)


def _run(
    client: paramiko.SSHClient,
    target: SshTarget,
    script: bytes,
    command: _Command,
    deadline: float,
    output_limit: int,
) -> ScriptResult:
    started = time.monotonic()
    stdout, stderr = CappedOutput(output_limit), CappedOutput(output_limit)
    channel = client.get_transport().open_session(timeout=max(deadline - started, 0.1))
    try:
        channel.exec_command(command.line)
        finished = _send(channel, script, deadline) and _collect(channel, stdout, stderr, deadline)
        if not finished:
            _stop(client, channel, stdout, stderr, command.token)
        status = channel.recv_exit_status() if finished else None
    finally:
        channel.close()
    result = ScriptResult(
        exit_status=status,
        stdout=stdout.text(),
        stderr=stderr.text(),
        timed_out=not finished,
        truncated=bool(stdout.dropped or stderr.dropped),
    )
    log.info("ssh %s: script %s after %.1f s", target.address, _outcome(result), time.monotonic() - started)
    return result


def _outcome(result: ScriptResult) -> str:
    if result.timed_out:
        return "timed out"
    return f"exited {result.exit_status}" + (" (output truncated)" if result.truncated else "")


def _send(channel: paramiko.Channel, data: bytes, deadline: float) -> bool:
    """Write the script to the command's stdin and close it; False if the deadline passed first."""
    try:
        channel.settimeout(max(deadline - time.monotonic(), 0.01))
        channel.sendall(data)
        channel.shutdown_write()
    except socket.timeout:
        return False
    except OSError:
        pass  # the command stopped reading (mktemp failed, say); its exit status says why
    finally:
        channel.settimeout(None)
    return True


def _collect(channel: paramiko.Channel, stdout: CappedOutput, stderr: CappedOutput, deadline: float) -> bool:
    """Read both streams until the command is over; False if the deadline passed first.

    Over means: the exit status came and the output ended, or the exit status came and `EXIT_LINGER`
    seconds passed (a background process the script started may hold the output open for ever).
    """
    exited_at: float | None = None
    while True:
        got = _read_ready(channel, stdout, stderr)
        now = time.monotonic()
        if channel.exit_status_ready():
            exited_at = exited_at or now
            ended = (channel.eof_received or channel.closed) and not got
            if ended or now - exited_at >= EXIT_LINGER or now >= deadline:
                return True
        if now >= deadline:
            return False
        if not got:
            _wait(channel, min(deadline - now, 0.2))


def _read_ready(channel: paramiko.Channel, stdout: CappedOutput, stderr: CappedOutput) -> bool:
    got = False
    if channel.recv_ready():
        stdout.add(channel.recv(CHUNK))
        got = True
    if channel.recv_stderr_ready():
        stderr.add(channel.recv_stderr(CHUNK))
        got = True
    return got


def _wait(channel: paramiko.Channel, seconds: float) -> None:
    """Sleep until data arrives on either stream, the status comes, or `seconds` pass."""
    if channel.eof_received or channel.closed:
        channel.status_event.wait(seconds)  # the readiness pipe stays readable after EOF
    else:
        select.select([channel], [], [], seconds)


def _stop(
    client: paramiko.SSHClient, channel: paramiko.Channel, stdout: CappedOutput, stderr: CappedOutput, token: str | None
) -> None:
    """The time-out expired: SIGTERM the script, SIGKILL it after KILL_GRACE, remove the copy if need be."""
    _signal(channel, "TERM")
    if _collect(channel, stdout, stderr, time.monotonic() + KILL_GRACE):
        return
    _signal(channel, "KILL")
    if token is not None:
        _remove_copy(client, token)


def _signal(channel: paramiko.Channel, name: str) -> None:
    """Send the SSH "signal" request (RFC 4254 6.9; OpenSSH 7.9 and later deliver it to the process group).

    paramiko has no public call for it, so the message is built here.
    """
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    try:
        channel.transport._send_user_message(message)
    except (paramiko.SSHException, OSError, EOFError):
        pass  # the connection is already gone


def _remove_copy(client: paramiko.SSHClient, token: str) -> None:
    """After SIGKILL the wrapper could not remove the script's copy: remove it by its name, best effort."""
    try:
        channel = client.get_transport().open_session(timeout=KILL_GRACE)
        channel.exec_command(f'rm -f "${{TMPDIR:-/tmp}}"/labdesk-script-{token}.*')
        channel.status_event.wait(KILL_GRACE)
        channel.close()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        log.warning("could not remove the script copy labdesk-script-%s.* from the lab: %s", token, exc)
