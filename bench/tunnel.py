"""The desktop tunnel's cost: latency and throughput it adds over talking to guacd directly, and the memory
and CPU of 1,000 idle sessions on one tunnel process.

A running lab is made the way the tests make one (SQLite in a temp dir, Redis db 12 flushed at the start,
`services.launch` and the queued jobs run in-process on the fake backend, whose endpoint is sealed in the
database). The guacd is the benchmark's own small asyncio server (`serve`, run as a process of its own): it
does guacd's handshake (`select` → `args` with VERSION_1_5_0 → size/audio/video/image/timezone/name/connect →
`ready,$id`) and answers the tunnel's health probes, then

- `--mode echo`: echoes every instruction it receives, and on `5.bench,<K>;` streams K `blob` instructions of
  65,536-character values as fast as the socket takes them, then `end`;
- `--mode idle`: sends each session one `sync` a second (staggered) and reads the answers.

`latency` (one run, both paths alternating in blocks on one connection each): the direct path is an asyncio
TCP client doing the handshake itself; the tunnel path is a `websockets` client (subprotocol `guacamole`)
through a real `labdesk tunnel` process with that server as its only guacd. A round trip is one
`4.sync,<ns>;` sent and echoed back, sequentially. Throughput: `--megabytes` of blobs requested, timed from
the request to the last byte (MB = 10^6 bytes), `--repeats` times per path, the median reported.
`--profile` (either command) runs the tunnel under cProfile and prints where its time went.

`idle --sessions 1000`: that many concurrent tunnel sessions from one client process (asyncio websockets
clients, tokens minted in batches just before each batch connects), each answering its server's `sync`
as a browser does. Memory per session is the tunnel's VmRSS after all are connected minus before (after a
warm-up of `--warmup` sessions, opened and closed), divided by the sessions; CPU is the tunnel's
utime+stime over `--window` seconds as % of one core. The client and the server share the same 2 cores.

Run: .venv/bin/python -m bench.tunnel latency [--round-trips 5000] [--megabytes 200] [--profile]
     .venv/bin/python -m bench.tunnel idle --sessions 1000 [--window 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile  # noqa: F401  (run as `-m cProfile` for --profile)
import io
import os
import pstats
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from redis import Redis

from bench.common import REDIS_URL, Children, bench_settings, settings_env, summary, wait_for
from tunnel.protocol import InstructionReader, encode

VERSION = "VERSION_1_5_0"
ARG_NAMES = ("hostname", "port", "password", "read-only", "color-depth")
BLOB_VALUE = 65536  # characters of base64 per blob, as guacd's largest image chunks
ENDPOINT = {"protocol": "vnc", "host": "10.9.8.7", "port": 5901, "password": "bench-pw"}
LATENCY_GOAL_MS = 1.0
THROUGHPUT_GOAL = 0.90


# --- the benchmark's guacd ------------------------------------------------------------------------------


def blob_instruction(chars: int = BLOB_VALUE) -> str:
    value = base64.b64encode(random.Random(7).randbytes(chars * 3 // 4)).decode()
    return encode("blob", 1, value)


async def serve(port: int, mode: str, blob_chars: int = BLOB_VALUE) -> None:
    """A guacd-like server: the real handshake, then echo (and blob streams) or a sync a second."""
    blob = blob_instruction(blob_chars).encode()
    counter = iter(range(1, 1 << 62))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        instructions = InstructionReader()
        pending: list = []

        async def next_instruction():  # type: ignore[no-untyped-def]
            while not pending:
                data = await reader.read(65536)
                if not data:
                    return None
                pending.extend(instructions.feed(data))
            return pending.pop(0)

        try:
            first = await next_instruction()
            if first is None or first.opcode != "select":
                return
            writer.write(encode("args", VERSION, *ARG_NAMES).encode())
            while True:
                instruction = await next_instruction()
                if instruction is None or instruction.opcode == "disconnect":
                    return  # the tunnel's health probe ends here
                if instruction.opcode == "connect":
                    break
            writer.write(encode("ready", f"$bench-{next(counter)}").encode())
            await (echo(reader, writer, instructions, pending, blob) if mode == "echo" else idle(reader, writer, instructions))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def echo(reader, writer, instructions: InstructionReader, pending: list, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    end = encode("end", 1).encode()
    while True:
        found, pending[:] = list(pending), []
        if not found:
            data = await reader.read(65536)
            if not data:
                return
            found = instructions.feed(data)
        back = []
        for instruction in found:
            if instruction.opcode == "disconnect":
                return
            if instruction.opcode == "bench":
                if back:
                    writer.write("".join(back).encode())
                    back = []
                for _ in range(int(instruction.args[0])):
                    writer.write(blob)
                    await writer.drain()
                writer.write(end)
            else:
                back.append(instruction.raw)
        if back:
            writer.write("".join(back).encode())
        await writer.drain()


async def idle(reader, writer, instructions: InstructionReader) -> None:  # type: ignore[no-untyped-def]
    async def syncs() -> None:
        await asyncio.sleep(random.random())
        while True:
            writer.write(encode("sync", int(time.time() * 1000)).encode())
            await asyncio.sleep(1.0)

    ticker = asyncio.ensure_future(syncs())
    try:
        while True:
            data = await reader.read(65536)
            if not data or any(i.opcode == "disconnect" for i in instructions.feed(data)):
                return
    finally:
        ticker.cancel()


# --- the lab and the processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


@dataclass
class Bench:
    """The running lab, the benchmark's guacd and the tunnel process, and a way to mint tokens for it."""

    work: Path
    mode: str
    max_connections: int = 4000
    profile: Path | None = None
    blob_chars: int = BLOB_VALUE
    children: Children = field(default_factory=Children)

    def start(self) -> "Bench":
        from broker import migrate, runtime, services
        from broker.runtime import Runtime
        from broker.secrets import secret_key
        from broker.tunnel_tokens import Grant, TokenMinter
        from tests.support.inline import lab_state, run_queued_jobs
        from tests.support.world import make_world

        self.guacd_port, self.tunnel_port = free_port(), free_port()
        settings = bench_settings(f"sqlite:///{self.work / 'labdesk.sqlite3'}", self.work,
                                  guacd_hosts=(f"127.0.0.1:{self.guacd_port}",), guacd_check_interval=10,
                                  tunnel_max_connections=self.max_connections)
        redis = Redis.from_url(settings.redis_url)
        redis.flushdb()  # db 12 is the benchmarks' own
        migrate.upgrade(settings)
        rt = Runtime(settings, redis=redis)
        runtime.install(rt)
        world = make_world(rt, config={"state_dir": str(self.work / "fake"), "endpoints": [ENDPOINT]}, learner="bench-learner")
        lab = services.launch(rt, world.user_id, world.activity_id, actor="bench")
        run_queued_jobs(rt)
        if lab_state(rt, lab.id) != "running":
            raise SystemExit(f"the lab did not reach running: {lab_state(rt, lab.id)}")
        self.grant = Grant(world.user_id, lab.id, "", False)
        self.minter = TokenMinter(secret_key(settings), settings.tunnel_token_ttl)

        self.guacd = self.children.start([sys.executable, "-m", "bench.tunnel", "serve", "--port", str(self.guacd_port),
                                          "--mode", self.mode, "--blob-chars", str(self.blob_chars)], dict(os.environ), self.work / "guacd.log")
        wait_for(lambda: listening(self.guacd_port), 20, 0.05, "the benchmark's guacd to listen")
        python = [sys.executable] + (["-m", "cProfile", "-o", str(self.profile)] if self.profile else [])
        env = settings_env(settings, LABDESK_GUACD_HOSTS=f"127.0.0.1:{self.guacd_port}", LABDESK_GUACD_CHECK_INTERVAL="10",
                           LABDESK_TUNNEL_MAX_CONNECTIONS=str(self.max_connections))
        self.tunnel = self.children.start([*python, "-m", "app", "tunnel", "--listen", f"127.0.0.1:{self.tunnel_port}"],
                                          env, self.work / "tunnel.log")
        wait_for(lambda: self.tunnel.poll() is not None or listening(self.tunnel_port), 30, 0.05, "the tunnel to listen")
        if self.tunnel.poll() is not None:
            raise SystemExit(f"the tunnel exited:\n{(self.work / 'tunnel.log').read_text()}")
        return self

    def url(self) -> str:
        token = self.minter.mint(self.grant)
        return f"ws://127.0.0.1:{self.tunnel_port}/tunnel?{urlencode({'token': token, 'width': 1280, 'height': 720})}"

    def stop(self) -> None:
        self.children.stop()
        Redis.from_url(REDIS_URL).flushdb()

    def tunnel_log_errors(self) -> list[str]:
        """The tunnel log's warnings and errors, each with its traceback; printed in full."""
        found: list[str] = []
        inside = False
        for line in (self.work / "tunnel.log").read_text(errors="replace").splitlines():
            timestamped = line[:4].isdigit()
            if timestamped:
                inside = " ERROR " in line or " WARNING " in line
                if inside:
                    found.append(line)
            elif inside or line.startswith("Traceback"):
                found[-1:] = [(found[-1] + "\n" if found else "") + line]
        for entry in found:
            print(f"tunnel log: {entry}")
        return found


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# --- latency and throughput -----------------------------------------------------------------------------


class Direct:
    """The guacd protocol over TCP, handshake and all, as the tunnel speaks it to guacd."""

    async def open(self, port: int) -> "Direct":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.instructions = InstructionReader()
        self.writer.write(encode("select", "vnc").encode())
        await self.until("args")
        self.writer.write((encode("size", 1280, 720, 96) + encode("audio") + encode("video") + encode("image", "image/png")
                           + encode("timezone", "UTC") + encode("name", "bench")
                           + encode("connect", VERSION, *("" for _ in ARG_NAMES))).encode())
        await self.until("ready")
        return self

    async def until(self, opcode: str):  # type: ignore[no-untyped-def]
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            for instruction in self.instructions.feed(data):
                if instruction.opcode == opcode:
                    return instruction

    async def round_trip(self) -> int:
        start = time.perf_counter_ns()
        self.writer.write(encode("sync", start).encode())
        await self.until("sync")
        return time.perf_counter_ns() - start

    async def stream(self, blobs: int, expected: int) -> float:
        start = time.perf_counter()
        self.writer.write(encode("bench", blobs).encode())
        got = 0
        while got < expected:
            data = await self.reader.read(1 << 18)
            if not data:
                raise ConnectionError("closed mid-stream")
            self.instructions.feed(data)  # a browser parses every instruction it receives, on both paths
            got += len(data)
        return time.perf_counter() - start

    async def close(self) -> None:
        self.writer.write(encode("disconnect").encode())
        self.writer.close()


class Tunneled:
    """The same through the tunnel: a browser's WebSocket."""

    async def open(self, url: str) -> "Tunneled":
        from websockets.asyncio.client import connect

        self.ws = await connect(url, subprotocols=["guacamole"], compression=None, max_size=None, open_timeout=30)  # type: ignore[list-item]
        self.instructions = InstructionReader()
        await self.until("")  # the tunnel's id comes first
        return self

    async def until(self, opcode: str):  # type: ignore[no-untyped-def]
        while True:
            message = await self.ws.recv()
            for instruction in self.instructions.feed_text(message if isinstance(message, str) else message.decode()):
                if instruction.opcode == opcode:
                    return instruction

    async def round_trip(self) -> int:
        start = time.perf_counter_ns()
        await self.ws.send(encode("sync", start))
        await self.until("sync")
        return time.perf_counter_ns() - start

    async def stream(self, blobs: int, expected: int) -> float:
        start = time.perf_counter()
        await self.ws.send(encode("bench", blobs))
        got = 0
        while got < expected:
            message = await self.ws.recv()
            self.instructions.feed_text(message)  # a browser parses every instruction it receives, on both paths
            got += len(message)  # ASCII: characters are bytes
        return time.perf_counter() - start

    async def close(self) -> None:
        await self.ws.send(encode("disconnect"))
        await self.ws.close()


async def latency_run(bench: Bench, args: argparse.Namespace) -> dict[str, object]:
    direct = await Direct().open(bench.guacd_port)
    tunneled = await Tunneled().open(bench.url())
    paths = {"direct": direct, "tunnel": tunneled}
    rtts: dict[str, list[int]] = {"direct": [], "tunnel": []}
    for path in paths.values():
        for _ in range(args.warmup):
            await path.round_trip()
    block = max(1, args.round_trips // args.blocks)
    while len(rtts["tunnel"]) < args.round_trips:
        for name, path in paths.items():
            rtts[name] += [await path.round_trip() for _ in range(min(block, args.round_trips - len(rtts[name])))]
    size = len(blob_instruction(args.blob_chars))
    blobs = max(1, round(args.megabytes * 1_000_000 / size))
    expected = blobs * size + len(encode("end", 1))
    seconds: dict[str, list[float]] = {"direct": [], "tunnel": []}
    for name, path in paths.items():
        await path.stream(max(1, blobs // 10), max(1, blobs // 10) * size + len(encode("end", 1)))  # warm-up
    pids = {"tunnel": bench.tunnel.pid, "guacd": bench.guacd.pid}
    cpu: dict[str, dict[str, float]] = {"direct": {}, "tunnel": {}}  # CPU seconds per process while streaming
    for _ in range(args.repeats):
        for name, path in paths.items():
            before = {who: cpu_seconds(pid) for who, pid in pids.items()} | {"client": sum(os.times()[:2])}
            seconds[name].append(await path.stream(blobs, expected))
            after = {who: cpu_seconds(pid) for who, pid in pids.items()} | {"client": sum(os.times()[:2])}
            for who in after:
                cpu[name][who] = cpu[name].get(who, 0.0) + after[who] - before[who]
    for path in paths.values():
        await path.close()
    return {"rtts": rtts, "seconds": seconds, "bytes": expected, "cpu": cpu}


def latency(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="labdesk-bench-tunnel-"))
    profile = work / "tunnel.prof" if args.profile else None
    bench = Bench(work, "echo", profile=profile, blob_chars=args.blob_chars)
    try:
        bench.start()
        result = asyncio.run(latency_run(bench, args))
        errors = bench.tunnel_log_errors()
    finally:
        bench.stop()
    figures: list[tuple[str, object, str]] = []
    ms = {name: [v / 1e6 for v in values] for name, values in result["rtts"].items()}  # type: ignore[attr-defined]
    for name in ("direct", "tunnel"):
        figures += [(f"{name}_rtt_p50", round(percentile(ms[name], 50), 3), "ms"),
                    (f"{name}_rtt_p99", round(percentile(ms[name], 99), 3), "ms")]
    added50 = percentile(ms["tunnel"], 50) - percentile(ms["direct"], 50)
    added99 = percentile(ms["tunnel"], 99) - percentile(ms["direct"], 99)
    figures += [("added_rtt_p50", round(added50, 3), "ms"), ("added_rtt_p99", round(added99, 3), "ms"),
                ("round_trips", len(ms["tunnel"]), "per path")]
    rates = {}
    for name in ("direct", "tunnel"):
        runs = result["seconds"][name]  # type: ignore[index]
        rates[name] = result["bytes"] / statistics.median(runs) / 1e6  # type: ignore[operator]
        figures.append((f"{name}_throughput", round(rates[name], 1), "MB/s"))
        busy = sum(result["seconds"][name])  # type: ignore[index]
        for who, used in result["cpu"][name].items():  # type: ignore[index]
            if name == "tunnel" or who != "tunnel":
                figures.append((f"{name}_stream_cpu_{who}", round(100 * used / busy), "% of one core"))
    figures += [("throughput_ratio", round(100 * rates["tunnel"] / rates["direct"], 1), "%"),
                ("blob_value", args.blob_chars, "characters per blob"),
                ("stream_size", round(result["bytes"] / 1e6, 1), f"MB x {args.repeats} per path"),  # type: ignore[operator]
                ("tunnel_log_warnings", len(errors), "lines")]
    if profile is not None:
        print_profile(profile)
    notes = [line.splitlines()[0][:200] for line in errors[:5]]
    if added50 > LATENCY_GOAL_MS:
        notes.append(f"added p50 {added50:.3f} ms is above the {LATENCY_GOAL_MS} ms goal (run with --profile)")
    if rates["tunnel"] < THROUGHPUT_GOAL * rates["direct"]:
        notes.append(f"tunnel throughput is {100 * rates['tunnel'] / rates['direct']:.0f} % of direct, below "
                     f"{THROUGHPUT_GOAL:.0%} (run with --profile)")
    summary("tunnel latency and throughput", figures,
            goals=[f"added p50 <= {LATENCY_GOAL_MS} ms", f"tunnel throughput >= {THROUGHPUT_GOAL:.0%} of direct"], notes=notes)


def print_profile(path: Path) -> None:
    if not path.exists():
        print(f"no profile at {path}")
        return
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(25)
    print("\n== the tunnel process under cProfile (whole run, by own time) ==")
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


# --- 1,000 idle sessions --------------------------------------------------------------------------------


@dataclass
class IdleStats:
    connected: int = 0
    syncs_answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        key = f"{type(exc).__name__}: {str(exc)[:80]}"
        self.errors[key] = self.errors.get(key, 0) + 1


async def idle_session(url: str, stats: IdleStats, opened: asyncio.Event, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    try:
        ws = await connect(url, subprotocols=["guacamole"], compression=None, open_timeout=60)  # type: ignore[list-item]
    except Exception as exc:  # noqa: BLE001  (counted and reported)
        stats.error(exc)
        opened.set()
        return
    reader = InstructionReader()
    first = True
    try:
        while not stop.is_set():
            receiving = asyncio.ensure_future(ws.recv())
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                break
            stopping.cancel()
            for instruction in reader.feed_text(receiving.result()):  # type: ignore[arg-type]
                if first and instruction.opcode == "":
                    first = False
                    stats.connected += 1
                    opened.set()
                elif instruction.opcode == "sync":
                    await ws.send(encode("sync", instruction.args[0]))
                    stats.syncs_answered += 1
                elif instruction.opcode == "error":
                    raise RuntimeError(f"tunnel error: {instruction.args}")
        await ws.send(encode("disconnect"))
        await ws.close()
    except Exception as exc:  # noqa: BLE001
        stats.error(exc)
    finally:
        opened.set()


async def idle_run(bench: Bench, args: argparse.Namespace) -> list[tuple[str, object, str]]:
    pid = bench.tunnel.pid
    rss_cold = rss_kb(pid)
    stats = IdleStats()
    warm = IdleStats()
    stop_warm = asyncio.Event()
    openings = [asyncio.Event() for _ in range(args.warmup)]
    warm_tasks = [asyncio.ensure_future(idle_session(bench.url(), warm, e, stop_warm)) for e in openings]
    await asyncio.gather(*(e.wait() for e in openings))
    stop_warm.set()
    await asyncio.gather(*warm_tasks)
    await asyncio.sleep(2)
    rss_before = rss_kb(pid)

    stop = asyncio.Event()
    tasks = []
    started = time.monotonic()
    for first in range(0, args.sessions, args.batch):
        count = min(args.batch, args.sessions - first)
        events = [asyncio.Event() for _ in range(count)]
        urls = [bench.url() for _ in range(count)]  # minted just before this batch connects
        tasks += [asyncio.ensure_future(idle_session(url, stats, event, stop)) for url, event in zip(urls, events)]
        await asyncio.gather(*(e.wait() for e in events))
    connect_seconds = time.monotonic() - started
    print(f"{stats.connected} of {args.sessions} sessions connected in {connect_seconds:.1f} s; errors: {stats.errors or 'none'}")
    await asyncio.sleep(args.settle)
    rss_after = rss_kb(pid)
    server_cpu0, client_cpu0 = cpu_seconds(bench.guacd.pid), sum(os.times()[:2])
    cpu0, syncs0, wall0 = cpu_seconds(pid), stats.syncs_answered, time.monotonic()
    await asyncio.sleep(args.window)
    cpu1, syncs1, wall1 = cpu_seconds(pid), stats.syncs_answered, time.monotonic()
    server_cpu1, client_cpu1 = cpu_seconds(bench.guacd.pid), sum(os.times()[:2])
    still = sum(1 for t in tasks if not t.done())
    rss_end = rss_kb(pid)
    stop.set()
    await asyncio.gather(*tasks)
    wall = wall1 - wall0
    per_session = (rss_after - rss_before) / max(1, stats.connected)
    return [
        ("sessions_requested", args.sessions, ""),
        ("sessions_connected", stats.connected, ""),
        ("sessions_still_open_after_window", still, ""),
        ("connect_errors_and_failures", sum(stats.errors.values()), ""),
        ("connect_all_seconds", round(connect_seconds, 1), "s"),
        ("tunnel_rss_cold", round(rss_cold / 1024, 1), "MiB"),
        ("tunnel_rss_before", round(rss_before / 1024, 1), f"MiB (after {args.warmup} warm-up sessions)"),
        ("tunnel_rss_after", round(rss_after / 1024, 1), "MiB"),
        ("tunnel_rss_end_of_window", round(rss_end / 1024, 1), "MiB"),
        ("memory_per_session", round(per_session, 1), "kB"),
        ("memory_per_session_from_cold", round((rss_after - rss_cold) / max(1, stats.connected), 1), "kB"),
        ("tunnel_cpu", round(100 * (cpu1 - cpu0) / wall, 1), f"% of one core over {wall:.0f} s"),
        ("syncs_answered_in_window", syncs1 - syncs0, f"({(syncs1 - syncs0) / wall:,.0f}/s)"),
        ("guacd_double_cpu", round(100 * (server_cpu1 - server_cpu0) / wall, 1), "% of one core"),
        ("client_cpu", round(100 * (client_cpu1 - client_cpu0) / wall, 1), "% of one core"),
    ] + [(f"error[{k}]", v, "") for k, v in stats.errors.items()] + [(f"warmup_error[{k}]", v, "") for k, v in warm.errors.items()]


def idle_sessions(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.sessions + 100:
        raise SystemExit(f"the descriptor limit {hard} is too low for {args.sessions} sessions")
    work = Path(tempfile.mkdtemp(prefix="labdesk-bench-tunnel-"))
    profile = work / "tunnel.prof" if args.profile else None
    bench = Bench(work, "idle", max_connections=max(4000, args.sessions + 100), profile=profile)
    try:
        bench.start()
        figures = asyncio.run(idle_run(bench, args))
        errors = bench.tunnel_log_errors()
    finally:
        bench.stop()
    figures.append(("tunnel_log_warnings", len(errors), "lines"))
    if profile is not None:
        print_profile(profile)
    summary(f"{args.sessions:,} idle tunnel sessions", figures,
            notes=[line.splitlines()[0][:200] for line in errors[:5]] + ["one lab, so every session resolves the same lab and guacd"])
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    lat = commands.add_parser("latency", help="added latency (p50/p99) and throughput, tunnel vs direct")
    lat.add_argument("--round-trips", type=int, default=5000, help="sequential round trips per path (default %(default)s)")
    lat.add_argument("--blocks", type=int, default=10, help="alternate the paths in this many blocks")
    lat.add_argument("--warmup", type=int, default=300, help="untimed round trips per path first")
    lat.add_argument("--megabytes", type=float, default=200, help="MB of blobs per throughput run (default %(default)s)")
    lat.add_argument("--blob-chars", type=int, default=BLOB_VALUE, help="characters of each blob's value (default %(default)s; "
                     "real guacd sends at most 8,064: 6,048 bytes in base64)")
    lat.add_argument("--repeats", type=int, default=3, help="throughput runs per path; the median is reported")
    lat.add_argument("--profile", action="store_true", help="run the tunnel under cProfile and print its top functions")
    idl = commands.add_parser("idle", help="memory and CPU of many idle sessions on one tunnel process")
    idl.add_argument("--sessions", type=int, default=1000)
    idl.add_argument("--batch", type=int, default=100, help="sessions connecting at once; tokens are minted per batch")
    idl.add_argument("--warmup", type=int, default=20, help="sessions opened and closed before the 'before' RSS")
    idl.add_argument("--settle", type=float, default=5, help="seconds after the last connect before the 'after' RSS")
    idl.add_argument("--window", type=float, default=30, help="seconds of CPU measurement")
    idl.add_argument("--profile", action="store_true", help="run the tunnel under cProfile (its CPU figure then includes the profiler)")
    srv = commands.add_parser("serve", help="(internal) the benchmark's guacd")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--mode", choices=("echo", "idle"), default="echo")
    srv.add_argument("--blob-chars", type=int, default=BLOB_VALUE)
    args = parser.parse_args()
    if args.command == "serve":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(serve(args.port, args.mode, args.blob_chars))
    elif args.command == "latency":
        latency(args)
    else:
        idle_sessions(args)


if __name__ == "__main__":
    main()
