"""A tiny Dramatiq app for worker-process tests: every processed message is recorded in Redis.

Environment: REDIS_URL, BROKER_APP_VISIBILITY_MS (default 2000), BROKER_APP_SLEEP_S (default 0.01).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis

from queueing.broker import StreamsBroker

QUEUE = "broker-app"
PROCESSED_KEY = "broker-app:processed"


def runs_key(n: int) -> str:
    """Return the counter of how many times message n ran."""
    return f"broker-app:runs:{n}"


broker = StreamsBroker(url=os.environ["REDIS_URL"], visibility_timeout_ms=int(os.environ.get("BROKER_APP_VISIBILITY_MS", "2000")))
dramatiq.set_broker(broker)
# Built once here (redis-py connects lazily): a client built on first use by racing threads
# would leave orphan copies whose __del__ disconnects the pool under the thread using it.
records = redis.Redis.from_url(os.environ["REDIS_URL"])


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def record(n: int) -> None:
    """Work a little, then record that message n ran."""
    time.sleep(float(os.environ.get("BROKER_APP_SLEEP_S", "0.01")))
    with records.pipeline(transaction=True) as pipe:
        pipe.sadd(PROCESSED_KEY, n)
        pipe.incr(runs_key(n))
        pipe.execute()
