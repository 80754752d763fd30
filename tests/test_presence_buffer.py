"""Batched keepalives: they reach Redis within a batch interval, newer signals win, and a Redis outage
turns into refusals (503) rather than silently lost signals."""

from __future__ import annotations

import pytest
from redis import Redis

from broker.activity import SEEN_KEY, SignalBuffer
from broker.errors import ServiceUnavailable
from tests.support.waiting import wait_until

DEAD_REDIS = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)


def score(redis: Redis, lab_id: int) -> float | None:
    return redis.zscore(SEEN_KEY, str(lab_id))


def test_keepalives_reach_redis_in_batches_and_a_leave_overrides_them(redis_client: Redis) -> None:
    signals = SignalBuffer(redis_client, interval=0.05)
    signals.keepalive(7)  # first write is synchronous: it proves Redis answers
    assert score(redis_client, 7) > 0
    signals.keepalive(8)
    signals.leave(7)
    wait_until(lambda: score(redis_client, 8) is not None, timeout=5, what="the batched keepalive")
    wait_until(lambda: score(redis_client, 7) < 0, timeout=5, what="the batched leave to replace the keepalive")


def test_redis_down_at_start_refuses_the_signal() -> None:
    with pytest.raises(ServiceUnavailable):
        SignalBuffer(DEAD_REDIS, interval=0.05).keepalive(1)


def test_a_failed_batch_is_kept_and_later_signals_are_refused_until_redis_answers(redis_client: Redis) -> None:
    signals = SignalBuffer(redis_client, interval=3600)  # the writer thread never wakes: we write by hand
    signals.keepalive(1)
    signals.keepalive(2)  # buffered
    signals.redis = DEAD_REDIS
    signals.write_pending()  # fails: the signal is kept, and the buffer stops trusting Redis
    with pytest.raises(ServiceUnavailable):
        signals.keepalive(3)
    signals.redis = redis_client
    signals.write_pending()
    assert score(redis_client, 2) is not None
