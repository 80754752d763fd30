"""The guacd double (tests/support/guacd_double.py) as a process of its own, for `bench.soak`.

Why a process: 1,000 desktop sessions each get a `sync` a second and answer it, and the double records
every instruction; in the load driver's process it would take the driver's CPU and memory, and its figures
would mix with the learners'. It listens on a free port of 127.0.0.1, prints `listening <port>` once it accepts connections, and runs until
SIGTERM or SIGINT.

Run: .venv/bin/python -m bench.soak_guacd [--sync-interval 1.0]
"""

from __future__ import annotations

import argparse
import signal
import threading

from tests.support.guacd_double import GuacdDouble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sync-interval", type=float, default=1.0, help="seconds between the syncs each session gets")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    double = GuacdDouble(sync_interval=args.sync_interval).start()  # on a free port
    print(f"listening {double.address[1]}", flush=True)
    stop.wait()
    double.stop()


if __name__ == "__main__":
    main()
