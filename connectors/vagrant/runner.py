"""`python -m connectors.vagrant.runner`: a lab's `vagrant up` in the background, under the lab's lock.

Why in the background: `up` imports a box, defines the machine, boots it and waits for SSH: seconds on a
tiny guest, minutes for a desktop image. A worker that waited would serve one learner at a time; instead
`provision` starts this runner and returns, and `observe` reads how it went (`up.json`), as it reads a Heat
stack's status. Suspend, resume and delete take seconds and run in the worker itself, under the same lock.

The job arrives as JSON on stdin (it holds the lab's service key: never on the command line). The process
forks; the child takes the lab's lock, tells the parent it has it, and the parent exits, so that when
`provision` returns the lab is already visibly busy. The child then runs `vagrant up`, and on the lab's
first boot sets its credentials (`credentials.inject`), records Vagrant's SSH settings, and writes the
outcome. A runner killed half-way leaves `up.json` saying "running" with a dead pid: `observe` starts a
new one (`vagrant up` carries on from where the machine is).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from connectors.vagrant import credentials, errors, records
from connectors.vagrant.cli import VagrantCli, VagrantError
from connectors.vagrant.labdir import LabDir

LOCKED = b"locked\n"


def main() -> None:
    job = json.loads(sys.stdin.read())
    reader, writer = os.pipe()
    child = os.fork()
    if child:
        os.close(writer)
        answer = os.read(reader, 64)
        sys.stdout.write(f"{child}\n" if answer == LOCKED else f"error {answer.decode(errors='replace')}\n")
        sys.stdout.flush()
        os._exit(0)
    os.close(reader)
    os.setsid()
    _quiet()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # stops Vagrant too (cli._communicate)
    lab = LabDir(Path(job["dir"]))
    try:
        with lab.locked(job["lock_timeout"]):
            lab.write({"state": "running", "pid": os.getpid(), "started": time.time()}, "up.json")
            os.write(writer, LOCKED)
            os.close(writer)
            lab.write(bring_up(lab, job), "up.json")
    except Exception as exc:  # the parent must always get an answer, and up.json an outcome
        try:
            os.write(writer, f"{type(exc).__name__}: {exc}".encode()[:60])
        except OSError:
            pass
        raise
    finally:
        os._exit(0)


def bring_up(lab: LabDir, job: dict[str, Any]) -> dict[str, Any]:
    """`vagrant up`, then first-boot credentials and the SSH settings; the outcome for up.json."""
    started = lab.read("up.json").get("started", time.time())
    cli = VagrantCli(Path(job["home"]), job["binary"], job["env"])
    try:
        lab.log(_log_text(_up(lab, cli, job)))
        if not lab.read().get("credentials_set"):
            credentials.ensure(lab, cli, job["credentials"], job["service_key"], job["status_timeout"], {})
        lab.update(suspended=False)
        lab.keep_spare()
    except VagrantError as exc:
        lab.log(f"{exc.kind}: {exc.message}")
        return {"state": "failed", "kind": exc.kind, "message": exc.message, "started": started, "finished": time.time()}
    except credentials.InjectionFailed as exc:
        lab.log(f"credentials: {exc}")
        return {"state": "failed", "kind": "credentials", "message": str(exc), "started": started, "finished": time.time()}
    return {"state": "done", "started": started, "finished": time.time()}


def _up(lab: LabDir, cli: VagrantCli, job: dict[str, Any]) -> records.Output:
    """`vagrant up`, waiting while Vagrant's own machine lock is held (by a `vagrant` whose runner was
    killed: it carries on alone, and this `up` then finds the machine running)."""
    deadline = time.monotonic() + job["timeout"]
    while True:
        try:
            with lab.key_file(job["service_key"] if lab.read().get("credentials_set") else None) as key_env:
                return cli.run("up", f"--provider={job['provider']}", cwd=lab.path, timeout=job["timeout"], env=key_env).output
        except VagrantError as exc:
            if errors.short(exc.kind) not in errors.LOCKED or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _log_text(output: records.Output) -> str:
    return "\n".join(f"{r.timestamp},{r.target},{r.kind},{','.join(r.data)}" for r in output.records)


def _quiet() -> None:
    """Detach from the caller's terminal and pipes: stdin, stdout and stderr go to /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


if __name__ == "__main__":
    main()
