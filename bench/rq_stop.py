"""How often an rq worker's exit stalls, with rq's stock teardown and with broker.rq_workers.PromptStop.

Each round enqueues one empty job and runs an in-process burst worker over it, while `--busy` processes
keep the CPUs busy (the stall is a race between the worker's teardown and its pub/sub listener thread,
so it shows on a loaded machine, such as CI). A round counts as stalled past one second. Prints, for each
worker class: rounds, stalled rounds, the longest round and the total time. Needs the local Redis.

    .venv/bin/python -m bench.rq_stop --rounds 100 --busy 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from redis import Redis
from rq import Queue, SimpleWorker

from broker.rq_workers import InlineWorker

STALL = 1.0


def spin(until: float) -> None:
    while time.monotonic() < until:
        pass


def rounds(worker_class: type[SimpleWorker], redis: Redis, count: int) -> list[float]:
    queue = Queue("bench-rq-stop", connection=redis)
    took = []
    for _ in range(count):
        queue.enqueue(time.sleep, 0)
        start = time.monotonic()
        worker_class([queue], connection=redis).work(burst=True, with_scheduler=False, logging_level="WARNING")
        took.append(time.monotonic() - start)
        if took[-1] > STALL:  # said at once: a run cut short still shows what it saw
            print(f"  {worker_class.__name__}: round {len(took)} stalled {took[-1]:.1f} s", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--busy", type=int, default=3, help="CPU-bound processes running meanwhile")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    redis = Redis.from_url(args.redis)
    redis.flushdb()
    for name, worker_class in (("rq SimpleWorker", SimpleWorker), ("InlineWorker (PromptStop)", InlineWorker)):
        until = time.monotonic() + 3600
        load = [multiprocessing.Process(target=spin, args=(until,), daemon=True) for _ in range(args.busy)]
        for process in load:
            process.start()
        try:
            took = rounds(worker_class, redis, args.rounds)
        finally:
            for process in load:
                process.terminate()
                process.join()
        stalled = sum(t > STALL for t in took)
        print(f"{name:<27} rounds {len(took)}  stalled {stalled}  longest {max(took):.2f} s  total {sum(took):.1f} s", flush=True)
    redis.flushdb()


if __name__ == "__main__":
    main()
