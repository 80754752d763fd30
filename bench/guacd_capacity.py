"""guacd's capacity on real desktops: memory, CPU and bytes per VNC session, for sizing "guacd per N sessions".

Why: docs/deploy.md sizes guacd per number of sessions, and guacd is the one part LabDesk does not write,
so its cost per session can only be measured on a real one. The desktops are the local connector's own
(Xvfb + openbox + xterm + x11vnc, started by `LocalConnector` as for a learner), once with a terminal
scrolling a build log and once with a still screen. Each session does what the tunnel does for a browser:
`connection_params` from the desktop's endpoint, `tunnel.guacd.connect` for the handshake (select vnc,
size, audio/video/image, connect), then it reads everything guacd sends and answers each `sync` at once,
as a fast browser does. guacd forks one process per connection, so its master and every descendant are
sampled from /proc (PSS from smaps_rollup, CPU time from stat) every few seconds.

Run: .venv/bin/python -m bench.guacd_capacity --guacd 127.0.0.1:4822 [--sessions 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from bench.common import summary, wait_for
from broker.connector import DesktopEndpoint, Handle, LabSpec, ObservedState
from broker.guacd_params import connection_params
from connectors.local import desktop, labs
from connectors.local.connector import LocalConnector
from tunnel.guacd import READ_SIZE, ClientInfo, GuacdConnection, HandshakeError, connect
from tunnel.hosts import parse_address, probe
from tunnel.protocol import InstructionCutter, InstructionReader, encode

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK")
# What the lab app shows: a build log scrolling at about 20 lines a second, or a terminal nobody touches.
SCROLL = "i=0; while :; do i=$((i+1)); echo \"[$i] building module_$i.c ... compiling, linking, running tests: ok\"; sleep 0.05; done"
SCENES = {
    "animated": f"xterm -geometry 160x48+0+0 -e sh -c '{SCROLL}'",
    "idle": "xterm -geometry 160x48+0+0 -e sh -c 'echo an idle lab; exec sleep 1000000'",
}
# What guacamole-common-js in Chromium announces (no video; PCM audio; PNG, JPEG and WebP images).
# A sync's timestamp, at the start of an instruction the cutter has already delimited (base64 and numbers
# hold no `;` or `.`, so this never matches inside image data).
SYNC_STAMP = re.compile(rb"(?:^|;)4\.sync,\d+\.(\d+)")
KEEP_ALIVE = 5.0  # guacamole-common-js sends `nop` this often; guacd drops a user silent for 15 s
BROWSER = ClientInfo(width=1280, height=800, audio=("audio/L8", "audio/L16"), image=("image/png", "image/jpeg", "image/webp"))


# -- guacd's processes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessSample:
    """guacd's master and descendants at one instant: CPU ticks per pid, summed PSS and RSS (kB)."""

    at: float
    ticks: dict[int, int]
    pss_kb: int
    rss_kb: int

    def cpu_seconds_since(self, earlier: "ProcessSample") -> float:
        """CPU used between two samples by the processes alive at both (a session's child lives throughout)."""
        shared = self.ticks.keys() & earlier.ticks.keys()
        return sum(self.ticks[pid] - earlier.ticks[pid] for pid in shared) / TICK


def listener_pid(port: int) -> int | None:
    """The pid that holds the listening TCP socket on `port` (guacd's master), or None if not on this host."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in (PROC / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    return int(entry.name)
            except OSError:
                continue
    return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime in ticks) of `pid`, or None once it has gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree(root: int) -> dict[int, int]:
    """`root` and all its descendants, pid → CPU ticks."""
    stats = {int(e.name): s for e in PROC.iterdir() if e.name.isdigit() and (s := _stat(int(e.name)))}
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats:
            found[pid] = stats[pid][1]
            frontier += [child for child, (parent, _) in stats.items() if parent == pid]
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of `pid` in kB from smaps_rollup: PSS shares the pages of forked children fairly."""
    values = {"Pss:": 0, "Rss:": 0}
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(" ")
            if name in values:
                values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values["Pss:"], values["Rss:"]


def sample(root: int) -> ProcessSample:
    ticks = tree(root)
    memory = [memory_kb(pid) for pid in ticks]
    return ProcessSample(time.monotonic(), ticks, sum(m[0] for m in memory), sum(m[1] for m in memory))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat, to say how loaded the machine was."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# -- desktops ----------------------------------------------------------------------------------------------
@contextmanager
def desktops(count: int, command: str, work: Path, geometry: str) -> Iterator[tuple[list[DesktopEndpoint], list[int]]]:
    """`count` local-connector desktops running `command`: their VNC endpoints and process-group ids.

    The connector's screen size is a module constant; a bench run may set another (1080p, say) for its
    own desktops, since guacd's memory follows the framebuffer.
    """
    desktop.GEOMETRY = geometry
    connector = LocalConnector("bench", {"state_dir": str(work), "command": command})
    handles: list[Handle] = []
    try:
        for index in range(count):
            handles.append(connector.provision(LabSpec(index + 1, "bench", "bench")))
        ready = lambda: all(connector.observe(h).state is ObservedState.READY for h in handles)  # noqa: E731
        wait_for(ready, 60, what=f"{count} desktops to be ready")
        groups = [labs.read_record(Path(h["dir"])).pgid for h in handles]  # type: ignore[union-attr]
        yield [connector.endpoints(h)[0] for h in handles], groups
    finally:
        for handle in handles:
            connector.delete(handle)


def group_ticks(pgids: list[int]) -> int:
    """CPU ticks of every process in these groups (Xvfb, openbox, xterm, x11vnc of the desktops)."""
    total = 0
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) in pgids:
                total += int(fields[11]) + int(fields[12])
    return total


# -- sessions ----------------------------------------------------------------------------------------------
@dataclass
class Session:
    """One browser's view of a guacd connection: what arrived, and how it ended."""

    connection: GuacdConnection
    received: int = 0
    syncs: int = 0
    ended: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    def start(self) -> "Session":
        self.tasks = [asyncio.create_task(self.browse()), asyncio.create_task(self.keep_alive())]
        return self

    def answer(self, timestamp: str) -> None:
        self.connection.writer.write(encode("sync", timestamp).encode())
        self.syncs += 1

    async def keep_alive(self) -> None:
        """`nop` every 5 s, as Guacamole.Client does: a still screen sends no syncs to answer."""
        while True:
            await asyncio.sleep(KEEP_ALIVE)
            self.connection.writer.write(encode("nop").encode())

    async def browse(self) -> None:
        """Read everything guacd sends; answer each `sync` at once, as a browser does once it has drawn.

        The stream is cut on the bytes, as the tunnel's relay does: on a busy 2-core machine a client that
        decoded every image would starve, fall silent and be dropped by guacd after 15 s.
        """
        for instruction in self.connection.early:
            if instruction.opcode == "sync":
                self.answer(instruction.args[0])
        cutter = InstructionCutter(self.connection.instructions.unread())
        while True:
            data = await self.connection.reader.read(READ_SIZE)
            if not data:
                self.ended = self.ended or "guacd closed the connection"
                return
            self.received += len(data)
            complete, opcodes = cutter.feed(data)
            if "sync" in opcodes:
                self.answer_syncs(complete, opcodes.count("sync"))
            if "error" in opcodes or "disconnect" in opcodes:
                self.ended = "guacd said error or disconnect"

    def answer_syncs(self, complete: bytes, count: int) -> None:
        """Answer the syncs among these whole instructions; a text element that fooled the pattern is parsed."""
        stamps = [m[1].decode() for m in SYNC_STAMP.finditer(complete)]
        if len(stamps) != count:
            stamps = [i.args[0] for i in InstructionReader().feed(complete) if i.opcode == "sync"]
        for stamp in stamps:
            self.answer(stamp)


async def open_sessions(address: tuple[str, int], endpoints: list[DesktopEndpoint], count: int, client: ClientInfo) -> tuple[list[Session], list[str]]:
    """`count` sessions spread round-robin over the desktops, opened 5 at a time; failures are reported."""
    sessions, failures = [], []
    for start in range(0, count, 5):
        batch = [endpoints[i % len(endpoints)] for i in range(start, min(count, start + 5))]
        results = await asyncio.gather(
            *(connect(address, "vnc", connection_params(e, read_only=False), client, timeout=30) for e in batch),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, GuacdConnection):
                sessions.append(Session(result).start())
            else:
                failures.append(str(result))
    return sessions, failures


async def close_sessions(sessions: list[Session]) -> None:
    for task in (task for session in sessions for task in session.tasks):
        task.cancel()
    await asyncio.gather(*(s.connection.close() for s in sessions), return_exceptions=True)


# -- one run -----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """The figures of one scene at one session count."""

    scene: str
    wanted: int
    opened: int = 0
    failures: list[str] = field(default_factory=list)
    ended: int = 0
    seconds: float = 0.0
    guacd_cpu: float = 0.0  # CPU-seconds of guacd (master and children) in the window
    pss_mb: float = 0.0  # mean guacd PSS over the window's samples, minus the idle master's
    rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    received: int = 0
    syncs: int = 0
    desktop_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_busy: float = 0.0  # % of all cores busy in the window
    load: tuple[float, float] = (0.0, 0.0)

    def per_session(self, value: float) -> float:
        return value / self.opened if self.opened else 0.0

    @property
    def cpu_pct(self) -> float:
        """guacd CPU per session, in % of one core."""
        return self.per_session(self.guacd_cpu / self.seconds * 100) if self.seconds else 0.0

    @property
    def frames_per_s(self) -> float:
        """Frames (syncs) each session got a second: guacd sends fewer when it runs short of CPU."""
        return self.per_session(self.syncs / self.seconds) if self.seconds else 0.0

    @property
    def ms_per_frame(self) -> float:
        """guacd CPU per frame sent: steadier than CPU per session, which follows the frame rate."""
        return self.guacd_cpu * 1000 / self.syncs if self.syncs else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.per_session(self.received / self.seconds) if self.seconds else 0.0


async def measure(run: Run, root: int, address: tuple[str, int], endpoints: list[DesktopEndpoint], pgids: list[int], args: argparse.Namespace) -> None:
    """Open the sessions, warm up (first full frames), then sample guacd for the window, then close."""
    baseline = sample(root)
    sessions, run.failures = await open_sessions(address, endpoints, run.wanted, args.browser)
    run.opened = len(sessions)
    await asyncio.sleep(args.warmup)
    for session in sessions:
        session.received = session.syncs = 0
    first, desktop0, client0, machine0 = sample(root), group_ticks(pgids), os.times(), machine_ticks()
    load0 = os.getloadavg()[0]
    samples = [first]
    while time.monotonic() - first.at < args.seconds:
        await asyncio.sleep(min(args.interval, args.seconds - (time.monotonic() - first.at)))
        samples.append(sample(root))
        print(f"  {run.scene} N={run.wanted}: t={samples[-1].at - first.at:5.1f}s guacd processes {len(samples[-1].ticks)}, "
              f"PSS {samples[-1].pss_kb / 1024:.1f} MB, CPU {samples[-1].cpu_seconds_since(samples[-2]) / max(samples[-1].at - samples[-2].at, 1e-6) * 100:.0f} %", flush=True)
    last, client1, machine1 = samples[-1], os.times(), machine_ticks()
    run.seconds = last.at - first.at
    run.guacd_cpu = last.cpu_seconds_since(first)
    run.pss_mb = (sum(s.pss_kb for s in samples[1:]) / len(samples[1:]) - baseline.pss_kb) / 1024
    run.rss_mb = (sum(s.rss_kb for s in samples[1:]) / len(samples[1:]) - baseline.rss_kb) / 1024
    run.peak_pss_mb = max(s.pss_kb for s in samples) / 1024
    run.received, run.syncs = sum(s.received for s in sessions), sum(s.syncs for s in sessions)
    run.ended = sum(1 for s in sessions if s.ended)
    run.desktop_cpu = (group_ticks(pgids) - desktop0) / TICK / run.seconds * 100
    run.client_cpu = (client1.user + client1.system - client0.user - client0.system) / run.seconds * 100
    run.machine_busy = (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1) * 100
    run.load = (load0, os.getloadavg()[0])
    await close_sessions(sessions)
    await settle(root, len(baseline.ticks))


async def settle(root: int, processes: int, timeout: float = 60) -> None:
    """Wait until guacd has ended the closed sessions' processes, so the next run starts from its base."""
    deadline = time.monotonic() + timeout
    while len(tree(root)) > processes and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


# -- reporting ---------------------------------------------------------------------------------------------
def figures(runs: list[Run]) -> list[tuple[str, object, str]]:
    out: list[tuple[str, object, str]] = []
    for run in runs:
        tag = f"{run.scene} N={run.wanted}"
        out += [
            (f"{tag} sessions open / wanted / ended early", f"{run.opened} / {run.wanted} / {run.ended}", ""),
            (f"{tag} guacd PSS per session", run.per_session(run.pss_mb), "MB"),
            (f"{tag} guacd RSS per session", run.per_session(run.rss_mb), "MB"),
            (f"{tag} guacd CPU per session", run.cpu_pct, "% of one core"),
            (f"{tag} bytes to the browser per session", run.bytes_per_s / 1000, "kB/s"),
            (f"{tag} frames (syncs) per session", run.frames_per_s, "/s"),
            (f"{tag} guacd CPU per frame", run.ms_per_frame, "ms"),
            (f"{tag} guacd PSS in all (peak)", run.peak_pss_mb, "MB"),
            (f"{tag} desktops' CPU (Xvfb, xterm, x11vnc)", run.desktop_cpu, "% of one core"),
            (f"{tag} this client's CPU", run.client_cpu, "% of one core"),
            (f"{tag} machine busy / load average", f"{run.machine_busy:.0f} % of {os.cpu_count()} cores / {run.load[0]:.1f} → {run.load[1]:.1f}", ""),
        ]
    return out


def unthrottled(runs: list[Run]) -> dict[str, Run]:
    """Per scene, the largest run whose sessions still got ≥ 80 % of the frame rate of its smallest run.

    guacd lowers a session's frame rate when its CPU runs short, so a saturated run costs less per
    session only because each learner sees fewer frames: it must not set the sessions-per-core figure.
    """
    chosen: dict[str, Run] = {}
    smallest: dict[str, float] = {}
    for run in sorted((r for r in runs if r.opened and r.seconds and not r.ended), key=lambda r: r.opened):
        rate = run.frames_per_s
        floor = 0.8 * smallest.setdefault(run.scene, rate)
        if run.scene not in chosen or rate >= floor or floor < 0.8:  # below a frame a second: a still screen
            chosen[run.scene] = run
    return chosen


def verdict(runs: list[Run]) -> list[tuple[str, object, str]]:
    """Sessions per guacd core (animated and idle) and per GB, from each scene's largest unthrottled run.

    Runs where a session ended early are left out: their figures describe fewer sessions than they claim.
    """
    out: list[tuple[str, object, str]] = []
    largest = unthrottled(runs)
    for scene, run in largest.items():
        if run.cpu_pct > 0:
            out.append((f"sessions per guacd core, {scene} (N={run.opened}, {run.frames_per_s:.1f} frames/s each)", 100 / run.cpu_pct, ""))
    memory = max((run.per_session(run.pss_mb) for run in largest.values()), default=0.0)
    if memory > 0:
        out.append(("sessions per GB of guacd memory (PSS, the larger scene)", 1024 / memory, ""))
    return out


# -- main --------------------------------------------------------------------------------------------------
def prioritise(niceness: int) -> None:
    """Run the client and the desktops it starts ahead of guacd. In production the browsers and labs are
    other machines; here they share 2 cores with guacd, and a starved client falls silent for 15 s and
    is dropped by guacd ("User is not responding"), which measured the client, not guacd."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError as exc:
        print(f"note: client left at niceness {os.getpriority(os.PRIO_PROCESS, 0)} ({exc}); on a busy machine its sessions may be dropped")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guacd", default=os.environ.get("LABDESK_TEST_GUACD", "127.0.0.1:4822"), help="host:port of a real guacd on this machine (default $LABDESK_TEST_GUACD or 127.0.0.1:4822)")
    parser.add_argument("--sessions", default="1,10,50", help="session counts to run, comma-separated (default 1,10,50)")
    parser.add_argument("--desktops", type=int, default=4, help="desktops the sessions are spread over (default 4)")
    parser.add_argument("--scenes", default="animated,idle", help=f"which of {', '.join(SCENES)} (default both)")
    parser.add_argument("--seconds", type=float, default=30, help="measuring window per run (default 30)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds after the sessions open before measuring (default 10)")
    parser.add_argument("--geometry", default=desktop.GEOMETRY, help=f"the desktops' Xvfb screen, WxHxDEPTH (default the local connector's, {desktop.GEOMETRY})")
    parser.add_argument("--nice", type=int, default=-10, help="niceness for this client and its desktops, which stand in for browsers and labs on other machines (default -10; needs root, else left as is)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples of guacd's processes (default 5)")
    args = parser.parse_args()
    args.counts = [int(n) for n in args.sessions.split(",") if n.strip()]
    size = re.fullmatch(r"(\d+)x(\d+)x(\d+)", args.geometry)
    if size is None:
        parser.error(f"--geometry {args.geometry!r} is not WIDTHxHEIGHTxDEPTH")
    args.browser = replace(BROWSER, width=int(size[1]), height=int(size[2]))
    args.scene_list = [s.strip() for s in args.scenes.split(",") if s.strip()]
    unknown = [s for s in args.scene_list if s not in SCENES]
    if unknown or not args.counts or min(args.counts) < 1 or args.desktops < 1:
        parser.error(f"--sessions needs positive counts, --desktops ≥ 1, --scenes from {', '.join(SCENES)} (got {unknown or args.sessions})")
    return args


def main() -> None:
    args = parse_args()
    try:
        address = parse_address(args.guacd)
    except ValueError as exc:
        raise SystemExit(f"--guacd: {exc}") from None
    if not asyncio.run(probe(address)):
        print(f"skipped: no guacd answers at {args.guacd}; start one (docs/desktop.md, building guacd) and pass --guacd host:port")
        return
    root = listener_pid(address[1])
    if root is None:
        raise SystemExit(f"guacd at {args.guacd} answers, but no process on this machine listens on port {address[1]}: run it here, where /proc shows it")
    missing = [p for p in ("Xvfb", "x11vnc", "xterm") if shutil.which(p) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing: apt-get install xvfb x11vnc xterm")
    prioritise(args.nice)
    print(f"guacd pid {root} at {args.guacd}; scenes {args.scene_list}, sessions {args.counts} over up to {args.desktops} desktops of {args.geometry}")
    runs = asyncio.run(run_all(args, address, root))
    summary(f"guacd capacity ({args.seconds:.0f} s windows, {args.warmup:.0f} s warm-up)", figures(runs) + verdict(runs), notes=[
        "CPU and PSS are guacd's master plus one forked process per connection; PSS minus the idle master's",
        "each client answers every sync at once (a fast browser): a slower browser gets fewer frames and costs guacd less",
    ])


async def run_all(args: argparse.Namespace, address: tuple[str, int], root: int) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="labdesk-guacd-bench-") as work:
        for scene in args.scene_list:
            with desktops(min(args.desktops, max(args.counts)), SCENES[scene], Path(work, scene), args.geometry) as (endpoints, pgids):
                for count in args.counts:
                    run = Run(scene, count)
                    try:
                        await measure(run, root, address, endpoints, pgids, args)
                    except HandshakeError as exc:
                        run.failures.append(str(exc))
                    if run.failures:
                        print(f"  {scene} N={count}: {len(run.failures)} sessions failed, first: {run.failures[0]}", flush=True)
                    runs.append(run)
    return runs


if __name__ == "__main__":
    main()
