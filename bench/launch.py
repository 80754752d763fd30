"""LTI 1.3 launches per second the web process handles on this machine's 2 cores, with p50/p99 latency,
and the learner's lab page they lead to.

The real app runs under gunicorn on 127.0.0.1 the way `labdesk run` starts it (`gthread`, 2 workers × 8
threads; `--server-threads` changes it), on PostgreSQL (`--databases postgres,sqlite` adds SQLite), with
Redis db 12. A platform of the benchmark's own (`tests/lti/signing_platform.py`: RSA keys, a JWKS over HTTP,
RS256 id_tokens) is registered in the database, with a fake backend (no desktop starts and no worker runs:
the job a first launch enqueues just sits in Redis) and the image the launches' `lab` claim names. Warm-up
launches (not timed) let each gunicorn worker fetch the JWKS and create the activity behind the link.

Each timed run is prepared first, not timed: one OIDC login over HTTP per launch (`GET /lti/login` → 302
with `state` and `nonce`), and one id_token signed for it, all for one course and one resource link. Then
`wrk --latency` runs a Lua script that sends each prepared `POST /lti/launch` exactly once (`id_token` and
`state` in the form, the `ld_state_<state>` cookie the login set) over `--connections` loopback connections,
for `--duration` seconds or until the launches are used up. Every check runs as for a real LMS: signature by
kid, iss, aud, exp/iat/age, single-use state and nonce, browser binding, deployment, claims. The Lua
`response()` hook counts every status other than 303, since a refused launch measures nothing; launches per
second are the 303s over wrk's run time. Three runs:

- first launches: each of `--learners` learners once, in turn; each creates the user, the membership and
  the lab, and enqueues its job;
- repeat launches: `--launches` launches by the learners who have launched, in turn (upserts, the lab is
  found);
- repeat launches over `--light-connections` (1): the latency of a launch that does not queue.

Then the lab page the launch redirects to (`GET /labs/<id>` with the session cookie a launch set) is loaded
the same way over `--page-sessions` learners' sessions, counting every status but 200. Each run also reports
where the 2 cores went (gunicorn, the app's PostgreSQL backends, wrk, everything else: this machine is shared)
and gunicorn's CPU per request. Last, launches go through the app in-process (WSGI call, no server, one
core): their rate, each step of a launch timed by wrapping it (wall clock and CPU), and a cProfile by package.

wrk is closed-loop: with C connections busy, mean latency ≈ C / throughput (Little's law), so p50/p99 at the
default 16 connections (one per server thread) mostly measure the queue when the rate is low; the light
run shows a single launch's latency. wrk shares the 2 cores with gunicorn and PostgreSQL; the figures are a
floor.

Run: .venv/bin/python -m bench.launch [--duration 10] [--connections 16] [--databases postgres,sqlite]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from redis import Redis
from sqlalchemy import create_engine, select, text

from bench.common import PG_ADMIN_URL, REDIS_URL, Children, bench_settings, drop_pg_database, scratch_database_url, settings_env, summary, wait_for
from bench.keepalive import _answers, by_package, free_port
from broker import migrate
from broker.config import Settings
from broker.models import Backend, Image, Lab, User
from broker.runtime import Runtime
from lti import platforms
from tests.lti.signing_platform import SigningPlatform

GOAL_RATE = 500
GOAL_P99 = 50.0
BACKEND = "bench-launch"
LAB = "bench-lab"
LINK = {"id": "bench-link", "title": "Bench lab"}
CONTEXT = {"id": "bench-course", "title": "Bench course"}

# Both scripts: each wrk thread gets a slot number, so it can take every `stride`-th prepared line.
LUA_THREADS = r"""
local source, stride, threads, counter = "{source}", {stride}, {{}}, 0

function setup(thread)
  thread:set("slot", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
"""

# Each wrk thread takes every `stride`-th prepared launch, sends it once, and stops when it has none left
# (the request it returns then is a cheap static file whose 200 is counted apart, never as a launch).
LAUNCH_LUA = LUA_THREADS + r"""
function init(args)
  items, sent, ok, bad, tail, statuses = {{}}, 0, 0, 0, 0, {{}}
  local n = 0
  for line in io.lines(source) do
    if n % stride == slot then
      local state, token = line:match("^([^\t]+)\t(.+)$")
      items[#items + 1] = wrk.format("POST", "/lti/launch", {{
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Cookie"] = "ld_state_" .. state .. "=" .. state,
      }}, "id_token=" .. token .. "&state=" .. state)
    end
    n = n + 1
  end
  count = #items
  tail_request = wrk.format("GET", "/static/lab.js")
end

function request()
  sent = sent + 1
  local item = items[sent]
  if item == nil then  -- used up: this thread stops
    wrk.thread:stop()
    return tail_request
  end
  return item
end

function response(status, headers, body)
  if status == 303 then
    ok = ok + 1
  elseif status == 200 and sent > #items then
    tail = tail + 1
  else
    bad = bad + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local ok_all, bad_all, tail_all, sent_all, codes = 0, 0, 0, 0, {{}}
  for _, thread in ipairs(threads) do
    ok_all = ok_all + thread:get("ok")
    bad_all = bad_all + thread:get("bad")
    tail_all = tail_all + thread:get("tail")
    sent_all = sent_all + math.min(thread:get("sent"), thread:get("count"))
    for code, count in pairs(thread:get("statuses")) do codes[#codes + 1] = code .. ":" .. count end
  end
  io.write(string.format("RESULT ok=%d bad=%d tail=%d sent=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d statuses=%s\n",
    ok_all, bad_all, tail_all, sent_all, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(codes, ",")))
end
"""

# The lab page: each wrk thread cycles over its share of the learners' sessions; anything but 200 is bad.
PAGE_LUA = LUA_THREADS + r"""
function init(args)
  items, sent, ok, bad, statuses = {{}}, 0, 0, 0, {{}}
  local n = 0
  for line in io.lines(source) do
    if n % stride == slot then
      local path, cookie = line:match("^([^\t]+)\t(.+)$")
      items[#items + 1] = wrk.format("GET", path, {{["Cookie"] = cookie}})
    end
    n = n + 1
  end
end

function request()
  sent = sent + 1
  return items[(sent - 1) % #items + 1]
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1; statuses[status] = (statuses[status] or 0) + 1 end
end

function done(summary, latency, requests)
  local ok_all, bad_all, codes = 0, 0, {{}}
  for _, thread in ipairs(threads) do
    ok_all = ok_all + thread:get("ok")
    bad_all = bad_all + thread:get("bad")
    for code, count in pairs(thread:get("statuses")) do codes[#codes + 1] = code .. ":" .. count end
  end
  io.write(string.format("RESULT ok=%d bad=%d tail=0 sent=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d statuses=%s\n",
    ok_all, bad_all, ok_all + bad_all, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(codes, ",")))
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="postgres", help="postgres, sqlite or both, comma-separated (default %(default)s)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement (default %(default)s)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default %(default)s, as `labdesk run`)")
    parser.add_argument("--server-threads", type=int, default=8, help="gthread threads per worker (default %(default)s, as `labdesk run`)")
    parser.add_argument("--learners", type=int, default=2_000, help="learners; each has one first launch (default %(default)s)")
    parser.add_argument("--launches", type=int, default=5_000, help="repeat launches prepared, each sent once (default %(default)s)")
    parser.add_argument("--light-connections", type=int, default=1,
                        help="connections of a second, light repeat-launch run: latency without queueing (0: skip)")
    parser.add_argument("--page-sessions", type=int, default=500, help="learner sessions the lab page load cycles through")
    parser.add_argument("--inprocess", type=int, default=500, help="in-process launches to time and profile (0: skip)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    figures: list[tuple[str, object, str]] = []
    notes: list[str] = []
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the platform's JWKS server: no line per fetch
    lms = SigningPlatform(client_id="bench-client", deployment_id="bench-deployment")
    try:
        for kind in [d.strip() for d in args.databases.split(",") if d.strip()]:
            figures += run_on(kind, lms, args, notes)
    finally:
        lms.close()
        Redis.from_url(REDIS_URL).flushdb()  # db 12 is the benchmarks': login states, nonces and launch jobs go with it
    summary("lti launch", figures,
            goals=[f">= {GOAL_RATE:,} launches/s and p99 <= {GOAL_P99:g} ms on 2 cores (signature, upserts, page; no backend wait)"],
            notes=notes)


def run_on(kind: str, lms: SigningPlatform, args: argparse.Namespace, notes: list[str]) -> list[tuple[str, object, str]]:
    """A fresh database of `kind` served by gunicorn: first launches, repeat launches, the lab page; then in-process."""
    work = Path(tempfile.mkdtemp(prefix=f"labdesk-bench-launch-{kind}-"))
    url = scratch_database_url(kind, work)
    try:
        port = args.port or free_port()
        base = f"http://127.0.0.1:{port}"
        settings = bench_settings(url, work, public_url=base, default_backend=BACKEND, emulator=False)
        migrate.upgrade(settings)
        seed(settings, lms)
        figures = served(kind, settings, base, lms, args, work, notes)
        if args.inprocess:
            figures += in_process(settings, lms, args.inprocess, kind)
        return figures
    finally:
        if kind == "postgres":
            drop_pg_database(url)
        shutil.rmtree(work, ignore_errors=True)


def served(kind: str, settings: Settings, base: str, lms: SigningPlatform, args: argparse.Namespace, work: Path,
           notes: list[str]) -> list[tuple[str, object, str]]:
    options = ["-w", str(args.workers), "-k", "gthread", "--threads", str(args.server_threads)]
    log = work / "gunicorn.log"
    env = settings_env(settings, LABDESK_PUBLIC_URL=base, LABDESK_DEFAULT_BACKEND=BACKEND, LABDESK_EMULATOR="false")
    children = Children()
    try:
        server = children.start([sys.executable, "-m", "gunicorn", "-b", base.removeprefix("http://"), *options,
                                 "--log-level", "warning", "app:create_app()"], env, log)
        wait_for(lambda: _answers(base), 30, what=f"gunicorn to answer; log: {log}")
        fetches = lms.jwks_fetches
        warm_up(base, lms, 4 * args.workers * args.server_threads)
        warm_fetches, fetches = lms.jwks_fetches - fetches, lms.jwks_fetches
        print(f"\n[{kind}] gunicorn {' '.join(options)} 'app:create_app()' on {base}; log {log}")

        print(f"\n[{kind}] first launches: each of {args.learners:,} learners once (user, membership, lab, job created)")
        first = timed_launches(kind, settings, base, lms, list(range(args.learners)), work / "first", args, server.pid)
        launched = learners_with_labs(settings)
        print(f"\n[{kind}] repeat launches: {args.launches:,} by the {len(launched):,} learners who have launched, in turn")
        repeat = timed_launches(kind, settings, base, lms, [launched[i % len(launched)] for i in range(args.launches)],
                                work / "repeat", args, server.pid)
        light = None
        if args.light_connections:
            light_args = argparse.Namespace(**{**vars(args), "connections": args.light_connections,
                                               "threads": min(args.threads, args.light_connections)})
            count = max(args.launches // 4, 1_500)
            print(f"\n[{kind}] repeat launches over {args.light_connections} connection(s): {count:,} prepared")
            light = timed_launches(kind, settings, base, lms, [launched[i % len(launched)] for i in range(count)],
                                   work / "light", light_args, server.pid)

        sessions = prepare_sessions(base, lms, launched[: args.page_sessions])
        (work / "pages.tsv").write_text("".join(f"{path}\t{cookie}\n" for path, cookie in sessions))
        print(f"\n[{kind}] lab page: GET /labs/<id> with the session cookies of {len(sessions)} learners, in turn")
        page = run_wrk(base, work / "page.lua", PAGE_LUA, work / "pages.tsv", args, server.pid, settings)
    finally:
        children.stop()
    timed_fetches = lms.jwks_fetches - fetches
    figures: list[tuple[str, object, str]] = []
    runs = [("first_launch", "first launches", first), ("repeat_launch", "repeat launches", repeat)]
    if light is not None:
        runs.append((f"repeat_launch_{args.light_connections}_connection", "light repeat launches", light))
    for name, shown, result in runs:
        figures += [
            (f"{kind}_{name}_per_second", round(result["ok"] / result["seconds"]), "launches/s"),
            (f"{kind}_{name}_latency_p50", result["p50"], "ms"),
            (f"{kind}_{name}_latency_p99", result["p99"], "ms"),
            (f"{kind}_{name}_answered_303", result["ok"], f"of {result['sent']} sent"),
            (f"{kind}_{name}_not_303", result["bad"], "responses"),
        ] + cpu_figures(kind, name, result)
        if result["bad"]:
            notes.append(f"{kind}: {result['bad']} {shown} were not answered 303 ({result['statuses']}): see {log}")
        if result["used_up"]:
            notes.append(f"{kind}: the prepared {shown} were used up before {args.duration}s; the rate is over {result['seconds']:.1f}s")
    figures += [
        (f"{kind}_page_requests_per_second", round(page["ok"] / page["seconds"]), "req/s"),
        (f"{kind}_page_latency_p50", page["p50"], "ms"),
        (f"{kind}_page_latency_p99", page["p99"], "ms"),
        (f"{kind}_page_not_200", page["bad"], "responses"),
    ] + cpu_figures(kind, "page", page)
    figures.append((f"{kind}_jwks_fetches", f"{warm_fetches} at warm-up, {timed_fetches} while timed", f"({args.workers} workers)"))
    if page["bad"]:
        notes.append(f"{kind}: {page['bad']} lab pages were not answered 200 ({page['statuses']})")
    for name, result in (("first launches", first), ("repeat launches", repeat)):
        rate = result["ok"] / result["seconds"]  # the goal is read at the default load (--connections)
        if rate < GOAL_RATE or result["p99"] > GOAL_P99:
            notes.append(f"{kind}: {name} miss the goal ({rate:,.0f}/s, p99 {result['p99']:,.0f} ms)")
    return figures


def cpu_figures(kind: str, name: str, result: dict[str, Any]) -> list[tuple[str, object, str]]:
    cpu = result["cpu"]
    figures: list[tuple[str, object, str]] = [
        (f"{kind}_{name}_gunicorn_cpu", round(cpu["gunicorn_seconds"] / max(result["ok"], 1) * 1000, 2), "ms per request"),
        (f"{kind}_{name}_machine_busy", round(cpu["busy"] * 100),
         f"% of {os.cpu_count()} cores (gunicorn {cpu['gunicorn']:.0%}, PostgreSQL {cpu['postgres']:.0%}, wrk {cpu['wrk']:.0%}, "
         f"everything else {cpu['other']:.0%})"),
    ]
    if cpu["postgres_seconds"]:
        figures.append((f"{kind}_{name}_postgres_cpu", round(cpu["postgres_seconds"] / max(result["ok"], 1) * 1000, 2), "ms per request"))
    if cpu.get("pg_sessions") is not None:
        figures.append((f"{kind}_{name}_postgres_connections_opened", cpu["pg_sessions"], "connections"))
    return figures


def timed_launches(kind: str, settings: Settings, base: str, lms: SigningPlatform, who: list[int], stem: Path,
                   args: argparse.Namespace, server: int) -> dict[str, Any]:
    """Prepare one login and token per entry of `who`, then send each once under wrk."""
    t0 = time.perf_counter()
    launches = prepare_launches(base, lms, who, "bench-learner")
    print(f"prepared {len(launches):,} launches in {time.perf_counter() - t0:.1f}s (logins over HTTP, id_tokens signed)")
    source = stem.with_suffix(".tsv")
    source.write_text("".join(f"{state}\t{token}\n" for state, token in launches))
    result = run_wrk(base, stem.with_suffix(".lua"), LAUNCH_LUA, source, args, server, settings)
    result["used_up"] = result["sent"] >= len(launches)
    return result


def learners_with_labs(settings: Settings) -> list[int]:
    """The learner numbers whose first launch went through (each made a lab)."""
    with Runtime(settings).session() as db:
        subjects = db.scalars(select(User.subject).join(Lab, Lab.user_id == User.id).where(User.subject.like("bench-learner-%")))
        return sorted(int(subject.rsplit("-", 1)[1]) for subject in subjects)


def seed(settings: Settings, lms: SigningPlatform) -> None:
    rt = Runtime(settings)
    platforms.add(rt, **lms.registration(), name="Bench LMS")
    with rt.session() as db:
        db.add(Backend(name=BACKEND, kind="fake", config={}))
        db.add(Image(slug=LAB, title="Bench lab", spec={}))
        db.commit()


def learner(index: int, prefix: str) -> dict[str, str]:
    return dict(sub=f"{prefix}-{index:05d}", name=f"Learner {index}", email=f"{prefix}-{index}@example.edu")


def _token(lms: SigningPlatform, base: str, nonce: str, who: dict[str, str]) -> str:
    return lms.sign(lms.claims(nonce, target_link_uri=base + "/lti/launch", resource_link=LINK, context=CONTEXT,
                               custom={"lab": LAB}, **who))


def logins(base: str, lms: SigningPlatform, count: int) -> list[tuple[str, str]]:
    """`count` OIDC login initiations over HTTP, 8 at a time; the (state, nonce) each sent to the platform."""
    query = dict(iss=lms.issuer, login_hint="bench", target_link_uri=base + "/lti/launch", client_id=lms.client_id,
                 lti_message_hint="bench")
    sessions: dict[int, requests.Session] = {}

    def one(_: int) -> tuple[str, str]:
        http = sessions.setdefault(threading.get_ident(), requests.Session())
        response = http.get(base + "/lti/login", params=query, allow_redirects=False, timeout=30)
        http.cookies.clear()  # each login is another browser's: its state cookie is set by the launch itself
        if response.status_code != 302:
            raise SystemExit(f"/lti/login answered {response.status_code}: {response.text[:300]}")
        sent = urllib.parse.parse_qs(urllib.parse.urlsplit(response.headers["Location"]).query)
        return sent["state"][0], sent["nonce"][0]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count), chunksize=64))


def prepare_launches(base: str, lms: SigningPlatform, who: list[int], prefix: str) -> list[tuple[str, str]]:
    """One login and one signed id_token per entry of `who` (learner numbers), in that order."""
    pairs = logins(base, lms, len(who))
    return [(state, _token(lms, base, nonce, learner(index, prefix))) for (state, nonce), index in zip(pairs, who)]


def launch_once(base: str, lms: SigningPlatform, index: int, prefix: str) -> tuple[str, str]:
    """A browser's login and launch; returns the lab page path and the session cookie (`session=…`)."""
    http = requests.Session()
    (state, token), = prepare_launches(base, lms, [index], prefix)
    http.cookies.set(f"ld_state_{state}", state)
    response = http.post(base + "/lti/launch", data={"id_token": token, "state": state}, allow_redirects=False, timeout=30)
    if response.status_code != 303 or "/labs/" not in response.headers.get("Location", ""):
        raise SystemExit(f"launch answered {response.status_code} {response.headers.get('Location', '')}: {response.text[:400]}")
    return urllib.parse.urlsplit(response.headers["Location"]).path, f"session={http.cookies['session']}"


def warm_up(base: str, lms: SigningPlatform, count: int) -> None:
    """Launches outside the population: each worker fetches the JWKS and fills its pools, the activity exists."""
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda i: launch_once(base, lms, i, "bench-warmup"), range(count)))
    path, cookie = done[0]
    page = requests.get(base + path, headers={"Cookie": cookie}, timeout=30)
    if page.status_code != 200 or "Bench lab" not in page.text:
        raise SystemExit(f"the lab page answered {page.status_code}: {page.text[:400]}")


def prepare_sessions(base: str, lms: SigningPlatform, who: list[int]) -> list[tuple[str, str]]:
    """A repeat launch of each learner in `who`: their lab page paths and session cookies."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: launch_once(base, lms, i, "bench-learner"), who))


def run_wrk(base: str, script: Path, template: str, source: Path, args: argparse.Namespace, server: int,
            settings: Settings) -> dict[str, Any]:
    """Run wrk; its RESULT line, where the machine's CPU went meanwhile (gunicorn, wrk, everything else) and,
    on PostgreSQL, how many connections the app opened (a pool smaller than the threads opens them per request)."""
    script.write_text(template.format(source=str(source), stride=args.threads))
    command = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s", "--latency",
               "-s", str(script), base]
    print(f"$ {' '.join(command)}")
    tick = os.sysconf("SC_CLK_TCK")
    gunicorn = [server, *_children(server)]
    sessions0, backends = _pg_sessions(settings), _pg_backends(settings)
    machine0, served0, wrk0 = _machine_cpu(), sum(_process_cpu(pid) for pid in gunicorn), resource.getrusage(resource.RUSAGE_CHILDREN)
    database0 = {pid: _process_cpu(pid) for pid in backends}
    output = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 120, check=True).stdout
    machine1, served1, wrk1 = _machine_cpu(), sum(_process_cpu(pid) for pid in gunicorn), resource.getrusage(resource.RUSAGE_CHILDREN)
    database = sum(max(0, _process_cpu(pid) - before) for pid, before in database0.items())
    sessions1 = _pg_sessions(settings, settle=1.5)
    print(output.rstrip())
    busy, total = machine1[0] - machine0[0], (machine1[1] - machine0[1]) or 1  # ticks, all cores together
    wrk_ticks = ((wrk1.ru_utime + wrk1.ru_stime) - (wrk0.ru_utime + wrk0.ru_stime)) * tick
    cores = os.cpu_count() or 1
    cpu = dict(busy=busy / total, gunicorn=(served1 - served0) / total, wrk=wrk_ticks / total, postgres=database / total,
               gunicorn_seconds=(served1 - served0) / tick, postgres_seconds=database / tick)
    cpu["other"] = max(0.0, cpu["busy"] - cpu["gunicorn"] - cpu["wrk"] - cpu["postgres"])
    cpu["pg_sessions"] = None if sessions0 is None or sessions1 is None else sessions1 - sessions0
    print(f"CPU during the run ({cores} cores = 100%): busy {cpu['busy']:.0%}: gunicorn {cpu['gunicorn']:.0%}, wrk {cpu['wrk']:.0%}, "
          f"PostgreSQL for the app (its connections open at the start) {cpu['postgres']:.0%}, everything else (Redis, this script, other users of the machine) "
          f"{cpu['other']:.0%}")
    found = re.search(r"RESULT ok=(\d+) bad=(\d+) tail=(\d+) sent=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) "
                      r"max_us=(\d+) statuses=(\S*)", output)
    if found is None:
        raise SystemExit("wrk printed no RESULT line")
    ok, bad, tail, sent, duration, p50, p99, most = (int(g) for g in found.groups()[:8])
    return dict(ok=ok, bad=bad, tail=tail, sent=sent, seconds=duration / 1e6, p50=p50 / 1000, p99=p99 / 1000,
                max=most / 1000, statuses=found.group(9) or "-", cpu=cpu)


def _children(pid: int) -> list[int]:
    """The gunicorn workers: the master's child processes."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _pg_sessions(settings: Settings, settle: float = 0.0) -> int | None:
    """Connections ever opened to the benchmark's PostgreSQL database (pg_stat_database.sessions)."""
    if not settings.sqlalchemy_url.startswith("postgresql"):
        return None
    time.sleep(settle)  # backends report their statistics about once a second
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_stat_clear_snapshot()"))
            return connection.execute(text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
                                      {"name": settings.sqlalchemy_url.rsplit("/", 1)[1]}).scalar()
    finally:
        engine.dispose()


def _pg_backends(settings: Settings) -> list[int]:
    """The PostgreSQL server processes of the app's pooled connections (to count their CPU)."""
    if not settings.sqlalchemy_url.startswith("postgresql"):
        return []
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"),
                                           {"name": settings.sqlalchemy_url.rsplit("/", 1)[1]}).scalars())
    finally:
        engine.dispose()


def _process_cpu(pid: int) -> int:
    """User + system clock ticks a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# The steps of a launch, as (module, function, what it does): the in-process run times each one by wrapping it.
STEPS = [
    ("lti.launch", "launch", "the launch view, all of the below"),
    ("lti.login_state", "consume", "state: Redis GETDEL"),
    ("lti.platforms", "by_id", "the platform and its deployments: 1 query"),
    ("lti.launch", "verify", "id_token: RS256 signature, iss, aud, exp/iat"),
    ("lti.login_state", "claim_nonce", "nonce: Redis SET NX"),
    ("lti.launch", "record", "user, course, membership: 3 upserts"),
    ("lti.launch", "activity_for", "the activity and its LMS services: 1 query"),
    ("broker.services", "launch", "the lab: find it, or create it and enqueue its job"),
    ("broker.services", "_require_queue", "  Redis PING"),
    ("broker.services", "live_lab", "  the learner's live lab: 1 query"),
    ("broker.services", "_clear_failed", "  (first launch) failed labs: 1 query"),
    ("broker.services", "_create", "  (first launch) insert the lab and its event, commit, enqueue"),
    ("broker.services", "_enqueue", "    (first launch) rq enqueue"),
    ("lti.launch", "_sign_in", "the session"),
]


def in_process(settings: Settings, lms: SigningPlatform, count: int, kind: str) -> list[tuple[str, object, str]]:
    """Launches through the app's WSGI function (no server, one core): first and repeat launches of `count`
    new learners, timed plainly; then each step of a launch timed by wrapping it; then a cProfile of repeat
    launches by package."""
    from app import create_app

    app = create_app(settings)
    client = app.test_client()
    base = settings.public_url
    query = dict(iss=lms.issuer, login_hint="bench", target_link_uri=base + "/lti/launch", client_id=lms.client_id)

    def prepare(who: range, prefix: str) -> list[tuple[str, bytes]]:
        prepared = []
        for index in who:
            location = client.get("/lti/login", query_string=query).headers["Location"]
            sent = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
            token = _token(lms, base, sent["nonce"][0], learner(index, prefix))
            prepared.append((sent["state"][0], urllib.parse.urlencode({"id_token": token, "state": sent["state"][0]}).encode()))
        return prepared

    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        statuses.append(status)

    def run(prepared: list[tuple[str, bytes]], profiler: cProfile.Profile | None = None) -> tuple[float, float]:
        """Wall and CPU milliseconds per launch."""
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/lti/launch", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "wsgi.errors": sys.stderr,
        }
        wall, cpu = time.perf_counter(), time.thread_time()
        if profiler:
            profiler.enable()
        for state, body in prepared:
            request = dict(environ, HTTP_COOKIE=f"ld_state_{state}={state}", CONTENT_LENGTH=str(len(body)), **{"wsgi.input": io.BytesIO(body)})
            for _ in app(request, start_response):
                pass
        if profiler:
            profiler.disable()
        refused = [s for s in statuses if not s.startswith("303")]
        if refused:
            raise SystemExit(f"in-process launches refused: {refused[:5]}")
        return (time.perf_counter() - wall) * 1000 / len(prepared), (time.thread_time() - cpu) * 1000 / len(prepared)

    run(prepare(range(1), "bench-inprocess-warm"))  # fetches the JWKS into this app's cache
    figures: list[tuple[str, object, str]] = []
    print(f"\n[{kind}] in-process, one core, no HTTP server ({count:,} new learners' first launches, then a repeat launch each):")
    for name in ("first", "repeat"):
        wall, cpu = run(prepare(range(count), "bench-inprocess"))
        print(f"  {name} launches: {1000 / wall:,.0f}/s; {wall:.2f} ms wall and {cpu:.2f} ms CPU each")
        figures += [(f"{kind}_inprocess_{name}_launches_per_second", round(1000 / wall), "launches/s"),
                    (f"{kind}_inprocess_{name}_launch_cpu", round(cpu, 2), "ms")]

    sample = max(count // 2, 50)
    first, repeat = prepare(range(sample), "bench-steps"), prepare(range(sample), "bench-steps")
    timings = {name: timed_steps(app, lambda p=prepared: run(p), sample) for name, prepared in (("first", first), ("repeat", repeat))}
    print(f"\n[{kind}] where a launch's time goes ({sample} first and {sample} repeat launches, each step timed by "
          "wrapping it; ms per launch, wall clock / CPU; wall minus CPU is waiting, on PostgreSQL and Redis):")
    print(f"  {'first launch':>15} {'repeat launch':>15}")
    for label in timings["first"]:
        (fw, fc), (rw, rc) = timings["first"][label], timings["repeat"].get(label, (0.0, 0.0))
        print(f"  {fw:6.2f} / {fc:5.2f}  {rw:6.2f} / {rc:5.2f}  {label}")

    profiler = cProfile.Profile()
    run(prepare(range(sample), "bench-inprocess"), profiler)  # repeat launches
    shares = by_package(profiler)
    print(f"\n[{kind}] repeat launches under cProfile, self time by package (psycopg's includes its wait for PostgreSQL):")
    for package, share in shares[:10]:
        print(f"  {share * 100:5.1f}%  {package}")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
    print("top functions by self time:")
    print("\n".join(line for line in stream.getvalue().splitlines()[6:] if line.strip()))
    figures += [(f"{kind}_inprocess_share_{pkg}", round(share * 100, 1), "%") for pkg, share in shares[:4]]
    return figures


def timed_steps(app: Any, go: Any, count: int) -> dict[str, tuple[float, float]]:
    """Run `go` with every function of STEPS wrapped in a timer; wall and CPU ms per launch of each."""
    import importlib

    totals: dict[str, list[float]] = {}
    undo = []

    def wrap(label: str, function: Any) -> Any:
        spent = totals.setdefault(label, [0.0, 0.0])

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - wall
                spent[1] += time.thread_time() - cpu
        return timed

    for module_name, name, what in STEPS:
        indent = what[: len(what) - len(what.lstrip())]
        label = f"{indent}{module_name}.{name}: {what.strip()}"
        if module_name == "lti.launch" and name == "launch":
            original = app.view_functions["lti.launch"]
            app.view_functions["lti.launch"] = wrap(label, original)
            undo.append(lambda original=original: app.view_functions.__setitem__("lti.launch", original))
            continue
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        setattr(module, name, wrap(label, original))
        undo.append(lambda module=module, name=name, original=original: setattr(module, name, original))
    try:
        wall, cpu = go()
    finally:
        for restore in reversed(undo):
            restore()
    result = {"the whole request (WSGI)": (wall, cpu)}
    result.update({label: (w * 1000 / count, c * 1000 / count) for label, (w, c) in totals.items()})
    return result


if __name__ == "__main__":
    main()
