"""Tell a Redis outage (a node down, a cluster failing over) from other errors, and ride one out.

During a failover a cluster answers CLUSTERDOWN or TRYAGAIN, a demoted primary READONLY, and a
dead node not at all; redis-py's own retries end within milliseconds, far sooner than a
promotion. A write that waits for replicas and gets too few acknowledgements is an outage too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.exceptions import ClusterDownError, MasterDownError, MovedError, ReadOnlyError, SlotNotCoveredError, TryAgainError

T = TypeVar("T")

FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 1.0


class NotReplicated(redis.RedisError):
    """Fewer replicas than asked acknowledged a write in time; the write may or may not survive a failover."""


#: MOVED too: a client holding a stale map of the slots refreshes it and tries again.
OUTAGE_ERRORS = (
    redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, MasterDownError, ReadOnlyError,
    SlotNotCoveredError, MovedError, NotReplicated,
)


def ride_out(call: Callable[[], T], for_s: float) -> T:
    """Call `call`, and again with growing pauses while it fails with an outage, for `for_s` at most."""
    deadline = time.monotonic() + for_s
    pause_s = FIRST_PAUSE_S
    while True:
        try:
            return call()
        except OUTAGE_ERRORS:
            if time.monotonic() + pause_s > deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, MAX_PAUSE_S)
