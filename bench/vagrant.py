"""Vagrant labs through the real connector: how long up, suspend, resume and destroy take, one lab and several.

The backend is the tests' (tests/support/vagrant.py): a real Vagrant + vagrant-libvirt on this machine's
libvirtd, the tiny guest's box (a 6 MB busybox guest under QEMU TCG), a transient storage pool, all removed
at the end. Each round provisions one lab and times, through `VagrantConnector` as the broker's workers
call it, polling `observe` every `--poll` seconds:
- up: `provision` until READY (the background `vagrant up`, SSH, first-boot credentials);
- suspend: `suspend` (a managed save) until SUSPENDED; resume: `resume` until READY;
- destroy: `delete` until GONE;
then `--parallel` labs are provisioned at once (time until all are READY; they boot side by side, each
under its own lock) and deleted. A real course image boots for longer: these figures are the broker's and
Vagrant's own share (each Vagrant call pays ~1 s of Ruby start-up).

Run: .venv/bin/python -m bench.vagrant [--rounds 5] [--parallel 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any, Callable

from broker.connector import LabSpec, ObservedState

ids = itertools.count(int(time.time()) % 100_000 * 100)


def timed(action: Callable[[], Any], connector: Any, handle: dict[str, Any], state: ObservedState, poll: float) -> float:
    started = time.monotonic()
    action()
    while connector.observe(handle).state != state:
        time.sleep(poll)
    return time.monotonic() - started


def one_round(connector: Any, spec: LabSpec, poll: float) -> dict[str, float]:
    handle: dict[str, Any] = {}
    figures = {"up": timed(lambda: handle.update(connector.provision(spec)), connector, handle, ObservedState.READY, poll)}
    figures["suspend"] = timed(lambda: connector.suspend(handle), connector, handle, ObservedState.SUSPENDED, poll)
    figures["resume"] = timed(lambda: connector.resume(handle), connector, handle, ObservedState.READY, poll)
    figures["destroy"] = timed(lambda: connector.delete(handle), connector, handle, ObservedState.GONE, poll)
    return figures


def parallel(connector: Any, specs: list[LabSpec], poll: float) -> tuple[float, float]:
    started = time.monotonic()
    handles = [connector.provision(spec) for spec in specs]
    pending = list(handles)
    while pending:
        pending = [h for h in pending if connector.observe(h).state != ObservedState.READY]
        time.sleep(poll)
    all_up = time.monotonic() - started
    started = time.monotonic()
    for handle in handles:
        connector.delete(handle)
    return all_up, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between observe calls")
    args = parser.parse_args()
    from connectors.vagrant.connector import VagrantConnector
    from tests.support.vagrant import tiny_entry, vagrant_backend

    params = tiny_entry().spec()
    spec = lambda: LabSpec(lab_id=next(ids), image="tiny-lab", owner="bench", params=params)  # noqa: E731
    with vagrant_backend() as config:
        connector = VagrantConnector("bench", {**config, "max_labs": max(10, args.parallel)})
        rounds = []
        for number in range(args.rounds):
            rounds.append(one_round(connector, spec(), args.poll))
            print(f"round {number + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rounds[-1].items()), flush=True)
        all_up, all_gone = parallel(connector, [spec() for _ in range(args.parallel)], args.poll)
    print("\nfigures (s; median, min-max over rounds)")
    for step in ("up", "suspend", "resume", "destroy"):
        values = [r[step] for r in rounds]
        print(f"{step}: {statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
    print(f"{args.parallel} labs at once, all up: {all_up:.2f} s")
    print(f"{args.parallel} labs deleted one after another: {all_gone:.2f} s")


if __name__ == "__main__":
    main()
