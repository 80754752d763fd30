"""Keepalives per second the web process absorbs on this machine's 2 cores, with p50/p99 latency.

The real app runs under gunicorn on 127.0.0.1 (SQLite in a temp dir, Redis db 12), once per server
setting in `--configs` (sync, gthread, gevent when installed). The benchmark signs in through the dev
login, launches an activity on an in-memory fake backend (no desktop starts, no worker runs), and keeps
the session cookie that now owns the lab. `wrk` (Debian package `wrk`) then posts
`POST /api/labs/<id>/keepalive` with that cookie for `--duration` seconds over `--connections`
loopback connections, and reports requests per second and latency percentiles (`wrk --latency`).
wrk shares the 2 cores with gunicorn, as a load balancer would not; the figure is a floor.

Then the same request is driven through the app in-process (WSGI call, no server, one core) to show
the app's own ceiling, profiled with cProfile: where each request's time goes, by package.

Run: .venv/bin/python -m bench.keepalive [--duration 10] [--configs sync,gthread,gevent]
"""

from __future__ import annotations

import argparse
import cProfile
import http.cookiejar
import importlib.util
import io
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

from redis import Redis

from bench.common import Children, bench_settings, settings_env, summary, wait_for
from broker import migrate
from broker.config import Settings
from broker.models import Activity, Backend, Course, Image
from broker.runtime import Runtime

GOAL = 5000
SERVERS = {
    "sync": ["-w", "2", "-k", "sync"],
    "gthread": ["-w", "2", "-k", "gthread", "--threads", "4"],
    "gevent": ["-w", "2", "-k", "gevent", "--worker-connections", "1000"],
    "sync4": ["-w", "4", "-k", "sync"],
    "gthread4": ["-w", "4", "-k", "gthread", "--threads", "2"],
}
LUA = """wrk.method = "POST"
wrk.path = "{path}"
wrk.headers["Cookie"] = "{cookie}"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="sync,gthread,gevent", help=f"gunicorn settings to try, of {', '.join(SERVERS)}")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per setting (default %(default)s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--inprocess", type=int, default=20_000, help="in-process requests to time and profile (0: skip)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    work = Path(tempfile.mkdtemp(prefix="labdesk-bench-web-"))
    settings = bench_settings(f"sqlite:///{work / 'labdesk.sqlite3'}", work)
    migrate.upgrade(settings)
    activity_id = seed(settings)
    redis = Redis.from_url(settings.redis_url)
    figures: list[tuple[str, object, str]] = []
    best = 0.0
    try:
        for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
            if name == "gevent" and importlib.util.find_spec("gevent") is None:
                print("gevent is not installed (pip install gevent): skipping the gevent worker")
                continue
            result = measure(name, settings, work, activity_id, args)
            best = max(best, result["rps"])
            figures += [
                (f"{name}_requests_per_second", round(result["rps"]), "req/s"),
                (f"{name}_latency_p50", result["p50"], "ms"),
                (f"{name}_latency_p99", result["p99"], "ms"),
                (f"{name}_errors", result["errors"], "responses"),
            ]
        if args.inprocess:
            figures += in_process(settings, activity_id, args.inprocess)
    finally:
        redis.flushdb()  # db 12 is the benchmarks' own: the launch jobs and keepalives go with it
        shutil.rmtree(work, ignore_errors=True)
    notes = []
    if best < GOAL:
        notes.append(f"best server figure {best:,.0f} req/s is below the {GOAL:,}/s goal: see the profile above for "
                     "where a request's time goes")
    summary("keepalive", figures, goals=[f">= {GOAL:,} keepalives/s on 2 cores"], notes=notes)


def seed(settings: Settings) -> int:
    rt = Runtime(settings)
    with rt.session() as session:
        backend = Backend(name="bench-web", kind="fake", config={})
        image = Image(slug="bench-web", title="Bench image", spec={})
        course = Course(issuer="dev", context_id="bench", title="Bench course")
        session.add_all([backend, image, course])
        session.flush()
        act = Activity(course_id=course.id, resource_link_id="bench", title="Bench lab", image_id=image.id, backend_id=backend.id)
        session.add(act)
        session.commit()
        return act.id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sign_in_and_launch(base: str, activity_id: int) -> tuple[str, str]:
    """The dev login, then a launch; returns the keepalive path of the new lab and the session cookie."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base + "/dev/login", data=urllib.parse.urlencode({"name": "bench-learner"}).encode(), timeout=10).read()
    page = opener.open(base + f"/activities/{activity_id}/launch", data=b"", timeout=10)
    lab_id = int(page.geturl().rstrip("/").rsplit("/", 1)[1])
    cookie = next(c for c in jar if c.name == "session")
    path = f"/api/labs/{lab_id}/keepalive"
    check = urllib.request.Request(base + path, method="POST", headers={"Cookie": f"session={cookie.value}"})
    with urllib.request.urlopen(check, timeout=10) as response:
        if response.status != 204:
            raise SystemExit(f"keepalive answered {response.status}, expected 204")
    return path, f"session={cookie.value}"


def measure(name: str, settings: Settings, work: Path, activity_id: int, args: argparse.Namespace) -> dict[str, float]:
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    children = Children()
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *SERVERS[name], "--log-level", "warning", "app:create_app()"]
    try:
        children.start(command, settings_env(settings), work / f"gunicorn-{name}.log")
        wait_for(lambda: _answers(base), 30, what=f"gunicorn ({name}) to answer; log: {work / f'gunicorn-{name}.log'}")
        path, cookie = sign_in_and_launch(base, activity_id)
        script = work / "keepalive.lua"
        script.write_text(LUA.format(path=path, cookie=cookie.replace('"', '\\"')))
        wrk = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s", "--latency",
               "-s", str(script), base]
        print(f"\n$ gunicorn {' '.join(SERVERS[name])} 'app:create_app()'   # {name}\n$ {' '.join(wrk)}")
        output = subprocess.run(wrk, capture_output=True, text=True, timeout=args.duration + 60, check=True).stdout
        print(output.rstrip())
        return parse_wrk(output)
    finally:
        children.stop()


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if a dependency is unhealthy
    except OSError:
        return False


def parse_wrk(output: str) -> dict[str, float]:
    def millis(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = millis(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = millis(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors}


def in_process(settings: Settings, activity_id: int, count: int) -> list[tuple[str, object, str]]:
    """Call the app's WSGI function directly: its own cost per keepalive, and a profile of it."""
    from app import create_app

    app = create_app(settings)
    client = app.test_client()
    client.post("/dev/login", data={"name": "bench-inprocess"})
    launched = client.post(f"/activities/{activity_id}/launch")
    lab_id = int(launched.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    cookie = client.get_cookie("session").value  # type: ignore[union-attr]
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": f"/api/labs/{lab_id}/keepalive", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "wsgi.url_scheme": "http", "HTTP_COOKIE": f"session={cookie}", "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "SERVER_PROTOCOL": "HTTP/1.1",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        statuses.append(status)

    def one() -> None:
        environ["wsgi.input"] = io.BytesIO(b"")
        for _ in app(dict(environ), start_response):
            pass

    one()
    if not statuses[-1].startswith("204"):
        raise SystemExit(f"in-process keepalive answered {statuses[-1]}")
    t0 = time.perf_counter()
    for _ in range(count):
        one()
    plain = count / (time.perf_counter() - t0)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count // 4):
        one()
    profiler.disable()
    shares = by_package(profiler)
    print(f"\nin-process: {plain:,.0f} keepalives/s on one core (no HTTP server); self time by package under cProfile:")
    for package, share in shares[:8]:
        print(f"  {share * 100:5.1f}%  {package}")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(18)
    print("top functions by cumulative time:")
    print("\n".join(line for line in stream.getvalue().splitlines()[6:] if line.strip()))
    figures: list[tuple[str, object, str]] = [("inprocess_requests_per_second_one_core", round(plain), "req/s")]
    figures += [(f"inprocess_share_{pkg}", round(share * 100, 1), "%") for pkg, share in shares[:4]]
    return figures


def by_package(profiler: cProfile.Profile) -> list[tuple[str, float]]:
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        totals[_package(filename)] += tottime
    whole = sum(totals.values()) or 1.0
    return sorted(((pkg, t / whole) for pkg, t in totals.items()), key=lambda item: -item[1])


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    root = str(Path(__file__).resolve().parent.parent) + "/"
    if filename.startswith(root):
        return "labdesk:" + filename[len(root):].split("/", 1)[0].removesuffix(".py")
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (socket, C calls)"
    return "stdlib"


if __name__ == "__main__":
    main()
