"""Learner presence: keepalives and "I left" signals, absorbed by Redis and folded into the database.

The lab page posts a keepalive every 30 s per open lab; at thousands of learners that is far too many
writes for the database, so each one is a single ZADD into one sorted set (member = lab id, score = the
time, negative for "the learner left"). The suspend sweep folds the set into `labs.idle_deadline`
in one batch just before it looks for idle labs.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.errors import ServiceUnavailable
from broker.models import Activity, Lab

SEEN_KEY = "labdesk:seen"
EPOCH = datetime(1970, 1, 1)
LIVE = ("requested", "provisioning", "running", "resuming")


def record_keepalive(redis: Redis, lab_id: int, now: datetime | None = None) -> None:
    """The learner is at the lab page now."""
    _record(redis, lab_id, _epoch(now or utcnow()))


def record_leave(redis: Redis, lab_id: int, now: datetime | None = None) -> None:
    """The learner closed the page or was disconnected for inactivity: suspend soon."""
    _record(redis, lab_id, -_epoch(now or utcnow()))


def _record(redis: Redis, lab_id: int, score: float) -> None:
    try:
        redis.zadd(SEEN_KEY, {str(lab_id): score})
    except RedisError as exc:
        raise ServiceUnavailable(f"cannot record activity: {exc}") from exc


class SignalBuffer:
    """Batches presence signals into one Redis round trip every `interval` seconds, per process.

    At thousands of keepalives a second, waiting for Redis inside each request is most of the request's
    cost. So while Redis is known to answer, a signal is only put in a dict (the latest one per lab wins,
    as in the sorted set) and a background thread writes the dict with one ZADD. While Redis is not known
    to answer (at start, or after a failed write), signals are written synchronously, so a request can
    still be refused with ServiceUnavailable instead of being lost silently. At most one interval of
    signals is lost if the process dies, which costs a lab a few hundred milliseconds of idle time.
    """

    def __init__(self, redis: Redis, interval: float) -> None:
        self.redis = redis
        self.interval = interval
        self._healthy = False
        self._pid = 0
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    def keepalive(self, lab_id: int) -> None:
        self._record(lab_id, _epoch(utcnow()))

    def leave(self, lab_id: int) -> None:
        self._record(lab_id, -_epoch(utcnow()))

    def _record(self, lab_id: int, score: float) -> None:
        if not self._healthy or self.interval <= 0:
            _record(self.redis, lab_id, score)
            self._healthy = True
            return
        self._start_in_this_process()
        with self._lock:
            self._pending[str(lab_id)] = score

    def _start_in_this_process(self) -> None:
        """One writer thread per process (web servers fork after the app is built)."""
        if self._pid == os.getpid():
            return
        self._pid, self._pending, self._lock = os.getpid(), {}, threading.Lock()
        threading.Thread(target=self._write_forever, name="labdesk-presence", daemon=True).start()

    def _write_forever(self) -> None:
        while True:
            time.sleep(self.interval)
            self.write_pending()

    def write_pending(self) -> None:
        """Write what is pending; on failure keep it (newer signals win) and go back to synchronous writes."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            self.redis.zadd(SEEN_KEY, batch)
        except RedisError:
            self._healthy = False
            with self._lock:
                for lab, score in batch.items():
                    self._pending.setdefault(lab, score)


def flush(redis: Redis, session: Session, leave_grace: int) -> int:
    """Move pending presence signals into the labs table; returns how many labs were updated."""
    with redis.pipeline(transaction=True) as pipe:
        pipe.zrange(SEEN_KEY, 0, -1, withscores=True)
        pipe.delete(SEEN_KEY)
        entries, _ = pipe.execute()
    if not entries:
        return 0
    signals = {int(member): score for member, score in entries}
    idle_after: dict[int, int] = {}
    for chunk in _chunks(list(signals)):
        idle_after.update(
            session.execute(
                select(Lab.id, Activity.idle_suspend_after)
                .join(Activity, Lab.activity_id == Activity.id)
                .where(Lab.id.in_(chunk), Lab.state.in_(LIVE))
            ).all()
        )
    groups: dict[tuple[datetime, datetime], list[int]] = defaultdict(list)
    for lab_id, idle in idle_after.items():
        groups[_times(signals[lab_id], idle, leave_grace)].append(lab_id)
    for (seen, until), lab_ids in groups.items():
        for chunk in _chunks(lab_ids):
            session.execute(update(Lab).where(Lab.id.in_(chunk)).values(last_active_at=seen, idle_deadline=until))
    session.commit()
    return len(idle_after)


def presence_settling(redis: Redis, session: Session) -> bool:
    """True while Redis has been up for less than two keepalive intervals: the idle sweep then suspends
    nobody (docs/faults.md).

    Redis keeps presence only in memory. A restart loses every signal since the last fold, and the keepalives
    refused while it was down were never recorded, so a lab past its folded idle deadline may belong to a
    learner who is at it. Each open page says so again within its keepalive interval (two, if one is lost);
    after that the set is whole again. A fresh Redis at a first start costs the same short hold.
    """
    uptime = int(redis.info("server")["uptime_in_seconds"])
    longest = session.scalar(select(func.max(Activity.keepalive_interval))) or 0
    return uptime < 2 * longest


def _times(score: float, idle_after: int, leave_grace: int) -> tuple[datetime, datetime]:
    """When the learner was last seen and when the lab becomes idle, to the whole second.

    Whole seconds let the labs seen in the same second share one UPDATE: a sweep folding ten thousand
    keepalives runs a few dozen statements instead of ten thousand.
    """
    seen = EPOCH + timedelta(seconds=int(abs(score)))
    grace = leave_grace if score < 0 else idle_after
    return seen, seen + timedelta(seconds=grace)


def _chunks(items: list[int], size: int = 5000) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch of a naive UTC time."""
    return (moment - EPOCH).total_seconds()
