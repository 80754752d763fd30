"""The `guest_agent` grading hook: run a check inside a libvirt/QEMU guest through its qemu-guest-agent.

Why: some labs have no SSH at all (a plain desktop image, a machine whose network the learner is meant to
break, a router with no sshd), yet the hypervisor still reaches the guest over the agent's virtio-serial
channel, which needs no network in the guest. The agent runs as root in the guest and answers only the
host, so the check cannot be intercepted or replaced by the learner: the learner has no way to talk to the
channel, and the script's copy lives in a fresh directory under /tmp that only root may enter (made with
`mkdir -m 700`, which fails rather than reuse anything that already exists at the random name).

The target: `CheckTarget(host=…, runner="guest_agent", extra={"uri": "qemu:///system", "domain": NAME or
UUID, "user": optional})`. Without `user` the check runs as root; with one it runs as that account (`su -s
/bin/sh USER -c …`, the copy's directory is then given to that account).

How (libvirt-python, `libvirt_qemu.qemuAgentCommand`, each call with a time limit of its own):
  1. guest-exec `mkdir -m 700 /tmp/labdesk-check-<random>`;
  2. guest-file-open `<dir>/check` ("w"), guest-file-write (base64), guest-file-close;
  3. guest-exec `chmod 700` on the copy;
  4. guest-exec of a `/bin/sh -c` wrapper that runs the copy with `check.args` in a session of its own
     (busybox/util-linux `setsid` when present), output captured by the agent;
  5. guest-exec-status polled until it has exited or `check.timeout` passes; then guest-exec
     `kill -9 -- -<pid> <pid>` (its process group, so what it started goes too), status polled briefly;
  6. out-data/err-data decoded and cut at `check.output_limit` bytes each (`truncated`; the agent itself
     keeps at most 16 MB of each, which it reports as out-/err-truncated);
  7. guest-exec `rm -rf` of the directory, whatever happened before.

Not reaching the guest (no libvirtd, unknown or stopped domain, no agent, an agent error) is not raised: it
comes back as `CheckOutcome(exit_status=None, error="guest agent of <domain>: …")`, which never passes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import time
import uuid
from typing import Any, ClassVar

from broker.grading import CheckOutcome, CheckScript, CheckTarget

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
AGENT_TIMEOUT = 10  # seconds for one agent call (qemuAgentCommand's own limit)
HELPER_TIMEOUT = 10.0  # seconds for a helper command (mkdir, chmod, kill, rm) to exit
KILL_WAIT = 3.0  # seconds to wait for a killed check's status (and its output so far)
POLL = 0.1  # seconds between guest-exec-status calls
CHUNK = 48 * 1024  # bytes per guest-file-write (the agent's messages stay small)
SHELL = "/bin/sh"
# $0 = the copy, "$@" = the check's args. A session (and process group) of its own when setsid exists, so
# a time-out can kill everything the check started.
WRAPPER = 'if command -v setsid >/dev/null 2>&1; then exec setsid "$0" "$@"; fi; exec "$0" "$@"'
AS_USER = 'exec su -s /bin/sh "$0" -c \'exec "$0" "$@"\' "$@"'  # $0 = user, then the wrapper's argv


class AgentError(Exception):
    """The agent (or libvirt on the way to it) failed; the message says what."""


class GuestAgentRunner:
    """Runs checks through libvirt's qemu-guest-agent channel; stateless, one instance may serve many checks."""

    name: ClassVar[str] = "guest_agent"

    def run(self, target: CheckTarget, check: CheckScript) -> CheckOutcome:
        started = time.monotonic()
        domain_name = target.extra.get("domain") or target.host
        prefix = f"guest agent of {domain_name}"
        if check.timeout <= 0:
            return CheckOutcome(None, error=f"check {check.id}: the timeout must be positive, not {check.timeout}")
        try:
            import libvirt  # noqa: PLC0415  (optional: only sites with libvirt labs install it)
            import libvirt_qemu  # noqa: PLC0415
        except ImportError as exc:
            return CheckOutcome(None, error=f"{prefix}: libvirt-python is not installed ({exc})")
        connection = None
        try:
            try:
                connection = libvirt.open(target.extra.get("uri") or DEFAULT_URI)
                domain = _lookup(libvirt, connection, domain_name)
            except libvirt.libvirtError as exc:
                raise AgentError(_libvirt_message(exc)) from exc
            agent = _Agent(domain, libvirt, libvirt_qemu)
            return _run(agent, target.extra.get("user") or "", check, started)
        except AgentError as exc:
            log.warning("check %s on %s could not run: %s", check.id, domain_name, exc)
            return CheckOutcome(None, error=f"{prefix}: {exc}", seconds=time.monotonic() - started)
        finally:
            if connection is not None:
                try:
                    connection.close()
                except libvirt.libvirtError:
                    pass


def _lookup(libvirt: Any, connection: Any, name: str) -> Any:
    try:
        uuid.UUID(name)
    except ValueError:
        domain = connection.lookupByName(name)
    else:
        domain = connection.lookupByUUIDString(name)
    if not domain.isActive():
        raise AgentError(f"domain {name!r} is not running")
    return domain


def _libvirt_message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    return (get() if get else None) or str(exc)


def _run(agent: _Agent, user: str, check: CheckScript, started: float) -> CheckOutcome:
    directory = f"/tmp/labdesk-check-{secrets.token_hex(12)}"
    path = f"{directory}/check"
    text = check.script if check.script.startswith("#!") else "#!/bin/sh\n" + check.script
    created = False
    try:
        agent.command(["mkdir", "-m", "700", directory])
        created = True
        agent.write_file(path, text.encode("utf-8"))
        agent.command(["chmod", "700", path])
        if user and user != "root":
            agent.command(["chown", "-R", f"{user}:", directory])
            argv = [SHELL, "-c", AS_USER, user, SHELL, "-c", WRAPPER, path, *check.args]
        else:
            argv = [SHELL, "-c", WRAPPER, path, *check.args]
        pid = agent.exec(argv)
        status = agent.wait(pid, started + check.timeout)
        timed_out = status is None
        if timed_out:
            agent.exec(["kill", "-9", "--", f"-{pid}", str(pid)], capture=False)
            status = agent.wait(pid, time.monotonic() + KILL_WAIT) or {}
    finally:
        if created:
            try:
                agent.command(["rm", "-rf", "--", directory])
            except AgentError as exc:  # the outcome stands; the copy is only in a root-only directory
                log.warning("could not remove %s in the guest: %s", directory, exc)
    stdout, cut_out = _output(status, "out", check.output_limit)
    stderr, cut_err = _output(status, "err", check.output_limit)
    exit_status = None
    if not timed_out:
        exit_status = status["exitcode"] if "exitcode" in status else 128 + int(status.get("signal", 0))
    return CheckOutcome(
        exit_status=exit_status,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        truncated=cut_out or cut_err,
        seconds=time.monotonic() - started,
    )


def _output(status: dict[str, Any], stream: str, limit: int) -> tuple[str, bool]:
    try:
        data = base64.b64decode(status.get(f"{stream}-data", ""))
    except (binascii.Error, ValueError):
        data = b""
    cut = len(data) > limit or bool(status.get(f"{stream}-truncated"))
    return data[:limit].decode("utf-8", errors="replace"), cut


class _Agent:
    """One domain's agent: JSON commands with a time limit each; failures become AgentError."""

    def __init__(self, domain: Any, libvirt: Any, libvirt_qemu: Any) -> None:
        self.domain = domain
        self.libvirt = libvirt
        self.libvirt_qemu = libvirt_qemu

    def call(self, execute: str, arguments: dict[str, Any] | None = None) -> Any:
        message: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        try:
            reply = self.libvirt_qemu.qemuAgentCommand(self.domain, json.dumps(message), AGENT_TIMEOUT, 0)
        except self.libvirt.libvirtError as exc:
            raise AgentError(f"{execute}: {_libvirt_message(exc)}") from exc
        try:
            decoded = json.loads(reply)
        except (TypeError, ValueError) as exc:
            raise AgentError(f"{execute}: unreadable reply {reply!r:.200}") from exc
        if "error" in decoded:
            raise AgentError(f"{execute}: {decoded['error'].get('desc', decoded['error'])}")
        return decoded.get("return")

    def exec(self, argv: list[str], capture: bool = True) -> int:
        reply = self.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": capture})
        return int(reply["pid"])

    def wait(self, pid: int, deadline: float) -> dict[str, Any] | None:
        """The process's status once it has exited, or None if it still runs at the deadline."""
        while True:
            status = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(POLL, max(deadline - time.monotonic(), 0)))

    def command(self, argv: list[str]) -> None:
        """Run a helper command to its end; AgentError unless it exits with 0."""
        status = self.wait(self.exec(argv), time.monotonic() + HELPER_TIMEOUT)
        if status is None:
            raise AgentError(f"{' '.join(argv)}: did not finish within {HELPER_TIMEOUT:g} s")
        if status.get("exitcode", -1) != 0:
            err = base64.b64decode(status.get("err-data", "")).decode("utf-8", errors="replace").strip()
            raise AgentError(f"{' '.join(argv)}: exit status {status.get('exitcode')} {err}".rstrip())

    def write_file(self, path: str, data: bytes) -> None:
        handle = self.call("guest-file-open", {"path": path, "mode": "w"})
        try:
            for offset in range(0, len(data), CHUNK) or [0]:
                chunk = data[offset : offset + CHUNK]
                self.call("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()})
        finally:
            self.call("guest-file-close", {"handle": handle})
