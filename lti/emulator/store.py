"""The emulator's state, kept in Redis under `labdesk:emulator:` so every web process sees the same LMS.

Layout (values are JSON documents unless said otherwise):

    labdesk:emulator:seeded                                   the time the demo course was created
    labdesk:emulator:next-id                                  counter for link and line item ids
    labdesk:emulator:courses                                  hash  context id -> course
    labdesk:emulator:course:<ctx>:members                     hash  sub -> person (with roles, order)
    labdesk:emulator:course:<ctx>:links                       hash  link id -> resource link
    labdesk:emulator:course:<ctx>:lineitems                   hash  line item id -> line item
    labdesk:emulator:course:<ctx>:lineitem:<id>:scores        hash  user id -> latest accepted score
    labdesk:emulator:course:<ctx>:lineitem:<id>:score-times   hash  user id -> its timestamp (µs since epoch)
    labdesk:emulator:course:<ctx>:lineitem:<id>:score-log     list  every accepted score, oldest first
    labdesk:emulator:outage                                   "1" while the services play dead
    labdesk:emulator:tokens-issued                            counter of access tokens issued
    labdesk:emulator:log                                      list  service requests, newest first (1000 kept)

Launch hints, deep-linking data, access tokens and used jtis live beside these (see launches.py and
oauth.py). The functions without a leading underscore are also what tests read the emulator's state with.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from redis import Redis
from redis.client import Pipeline

from broker.runtime import Runtime
from lti.emulator import people, site

PREFIX = "labdesk:emulator:"
SEED_LINK_ID = "demo-desktop-lab"
SEED_LINE_ITEM_ID = "demo-desktop-lab-grade"
LOG_LENGTH = 1000


def key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


SEEDED = key("seeded")
NEXT_ID = key("next-id")
COURSES = key("courses")
OUTAGE = key("outage")
TOKENS_ISSUED = key("tokens-issued")
LOG = key("log")


def _course_key(context: str, what: str) -> str:
    return key("course", context, what)


def _item_key(context: str, item_id: str, what: str) -> str:
    return key("course", context, "lineitem", item_id, what)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --- The demo course, created once -------------------------------------------------------------------


def ensure_seeded(rt: Runtime) -> None:
    """Create the demo course on first use; when several processes race, exactly one writes it."""
    if rt.redis.exists(SEEDED):
        return

    def seed(pipe: Pipeline) -> None:
        if pipe.exists(SEEDED):
            return
        pipe.multi()
        _write_seed(pipe)
        pipe.set(SEEDED, _now())

    rt.redis.transaction(seed, SEEDED)


def _write_seed(pipe: Pipeline) -> None:
    context = site.COURSE_ID
    course = {"id": context, "label": "DEMO-101", "title": "Demo course",
              "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"]}
    pipe.hset(COURSES, context, json.dumps(course))
    members = {p.sub: json.dumps({**p.as_dict(), "order": n}) for n, p in enumerate(people.everyone())}
    pipe.hset(_course_key(context, "members"), mapping=members)
    link = {"id": SEED_LINK_ID, "title": "Demo desktop lab", "text": "A Linux desktop in your browser.",
            "custom": {"lab": "local-desktop"}, "url": "", "presentation": "iframe", "order": 0, "created_at": _now()}
    pipe.hset(_course_key(context, "links"), SEED_LINK_ID, json.dumps(link))
    item = {"id": SEED_LINE_ITEM_ID, "label": "Demo desktop lab", "scoreMaximum": 10,
            "resourceLinkId": SEED_LINK_ID, "order": 0}
    pipe.hset(_course_key(context, "lineitems"), SEED_LINE_ITEM_ID, json.dumps(item))


def reset(rt: Runtime) -> None:
    """Forget everything the emulator holds (the next request seeds the demo course again)."""
    names = list(rt.redis.scan_iter(match=PREFIX + "*", count=500))
    for start in range(0, len(names), 500):
        rt.redis.delete(*names[start:start + 500])


def _new_id(redis: Redis, prefix: str) -> tuple[str, int]:
    number = int(redis.incr(NEXT_ID))
    return f"{prefix}-{number}", number


def _values(redis: Redis, name: str) -> list[dict[str, Any]]:
    return sorted((json.loads(v) for v in redis.hvals(name)), key=lambda d: (d.get("order", 0), d.get("id", "")))


def _value(redis: Redis, name: str, field: str) -> dict[str, Any] | None:
    raw = redis.hget(name, field)
    return json.loads(raw) if raw is not None else None


# --- Courses and rosters -----------------------------------------------------------------------------


def course(rt: Runtime, context: str) -> dict[str, Any] | None:
    return _value(rt.redis, COURSES, context)


def courses(rt: Runtime) -> list[dict[str, Any]]:
    return _values(rt.redis, COURSES)


def members(rt: Runtime, context: str) -> list[people.Person]:
    """The course roster in a stable order (the membership service pages through it)."""
    return [people.Person.of(d) for d in _values(rt.redis, _course_key(context, "members"))]


def member(rt: Runtime, context: str, sub: str) -> people.Person | None:
    data = _value(rt.redis, _course_key(context, "members"), sub)
    return people.Person.of(data) if data else None


# --- Resource links ----------------------------------------------------------------------------------


def links(rt: Runtime, context: str) -> list[dict[str, Any]]:
    return _values(rt.redis, _course_key(context, "links"))


def link(rt: Runtime, context: str, link_id: str) -> dict[str, Any] | None:
    return _value(rt.redis, _course_key(context, "links"), link_id)


def add_link(
    rt: Runtime, context: str, title: str, text: str = "", custom: dict[str, str] | None = None,
    url: str = "", presentation: str = "iframe",
) -> dict[str, Any]:
    """A new resource link (what a deep-linking response places in the course). `url` empty: the tool's
    launch URL."""
    link_id, order = _new_id(rt.redis, "link")
    data = {"id": link_id, "title": title, "text": text, "custom": custom or {}, "url": url,
            "presentation": presentation, "order": order, "created_at": _now()}
    rt.redis.hset(_course_key(context, "links"), link_id, json.dumps(data))
    return data


# --- Line items --------------------------------------------------------------------------------------


def line_items(rt: Runtime, context: str) -> list[dict[str, Any]]:
    """Line items as stored: the AGS fields, with the local `id` (not yet the URL the service shows)."""
    return _values(rt.redis, _course_key(context, "lineitems"))


def line_item(rt: Runtime, context: str, item_id: str) -> dict[str, Any] | None:
    return _value(rt.redis, _course_key(context, "lineitems"), item_id)


def add_line_item(rt: Runtime, context: str, fields: dict[str, Any]) -> dict[str, Any]:
    item_id, order = _new_id(rt.redis, "item")
    data = {**fields, "id": item_id, "order": order}
    rt.redis.hset(_course_key(context, "lineitems"), item_id, json.dumps(data))
    return data


def replace_line_item(rt: Runtime, context: str, item_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Put new fields on an existing line item (its id and position stay); None when it does not exist."""
    old = line_item(rt, context, item_id)
    if old is None:
        return None
    data = {**fields, "id": item_id, "order": old.get("order", 0)}
    rt.redis.hset(_course_key(context, "lineitems"), item_id, json.dumps(data))
    return data


def delete_line_item(rt: Runtime, context: str, item_id: str) -> bool:
    """Remove a line item and every score it holds."""
    with rt.redis.pipeline() as pipe:
        pipe.hdel(_course_key(context, "lineitems"), item_id)
        pipe.delete(*(_item_key(context, item_id, what) for what in ("scores", "score-times", "score-log")))
        removed, _ = pipe.execute()
    return bool(removed)


# --- Scores ------------------------------------------------------------------------------------------

# Accept a score only when its timestamp is strictly newer than the last one accepted for that user and
# line item; the check and the writes are one atomic step, so two racing posts cannot both win.
_RECORD_SCORE = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


def record_score(rt: Runtime, context: str, item_id: str, score: dict[str, Any], instant_us: int) -> bool:
    """Keep `score` as the user's latest for the line item; False (nothing kept) when a score with the
    same or a later timestamp was accepted before."""
    names = [_item_key(context, item_id, what) for what in ("score-times", "scores", "score-log")]
    accepted = rt.redis.eval(_RECORD_SCORE, 3, *names, score["userId"], str(instant_us), json.dumps(score))
    return bool(accepted)


def latest_scores(rt: Runtime, context: str, item_id: str) -> dict[str, dict[str, Any]]:
    """user id -> the latest score accepted for the line item."""
    raw = rt.redis.hgetall(_item_key(context, item_id, "scores"))
    return {user.decode(): json.loads(value) for user, value in raw.items()}


def scores(rt: Runtime, context: str = site.COURSE_ID) -> dict[str, dict[str, dict[str, Any]]]:
    """line item id -> user id -> latest accepted score, for every line item of the course."""
    ensure_seeded(rt)
    return {item["id"]: latest_scores(rt, context, item["id"]) for item in line_items(rt, context)}


def score_history(rt: Runtime, context: str, item_id: str) -> list[dict[str, Any]]:
    """Every score accepted for the line item, in the order they arrived."""
    return [json.loads(v) for v in rt.redis.lrange(_item_key(context, item_id, "score-log"), 0, -1)]


# --- Outage switch, counters and the request log -----------------------------------------------------


def set_outage(rt: Runtime, down: bool) -> None:
    """While down, the token, grade and roster services answer 503."""
    if down:
        rt.redis.set(OUTAGE, "1")
    else:
        rt.redis.delete(OUTAGE)


def outage(rt: Runtime) -> bool:
    return bool(rt.redis.exists(OUTAGE))


def count_token(rt: Runtime) -> None:
    rt.redis.incr(TOKENS_ISSUED)


def tokens_issued(rt: Runtime) -> int:
    """How many access tokens the token endpoint has issued (a tool that caches its token asks rarely)."""
    return int(rt.redis.get(TOKENS_ISSUED) or 0)


def log_request(rt: Runtime, entry: dict[str, Any]) -> None:
    with rt.redis.pipeline(transaction=False) as pipe:
        pipe.lpush(LOG, json.dumps({**entry, "at": time.time()}))
        pipe.ltrim(LOG, 0, LOG_LENGTH - 1)
        pipe.execute()


def service_log(rt: Runtime) -> list[dict[str, Any]]:
    """The latest requests to the token, grade and roster services, oldest first: method, path, status,
    scopes of the token used, and the time."""
    return [json.loads(v) for v in reversed(rt.redis.lrange(LOG, 0, -1))]
