"""Build the Redis client and the Streams broker every process shares."""

from __future__ import annotations

from typing import Callable

import dramatiq
import redis
from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications, TimeLimit

from queueing.broker import StreamsBroker
from queueing.messages import QUEUE_NAME

REDIS_TIMEOUT_S = 5.0


def connect_redis(redis_url: str) -> redis.Redis:
    """Connect lazily through a pool that waits for a free connection instead of raising."""
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=64, timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S * 2, health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def build_broker(
    client: redis.Redis, on_dead_letter: Callable[[dramatiq.Message, str], None] | None = None,
    visibility_timeout_ms: int = 60_000,
) -> StreamsBroker:
    """Build the Streams broker with the middleware the actors rely on and declare the job queue."""
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries(), CurrentMessage()]
    broker = StreamsBroker(
        client=client, middleware=middleware, on_dead_letter=on_dead_letter, visibility_timeout_ms=visibility_timeout_ms,
    )
    broker.declare_queue(QUEUE_NAME)
    return broker
