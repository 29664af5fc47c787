"""Build the Redis client and the Streams broker every process shares."""

from __future__ import annotations

from typing import Callable

import dramatiq
import redis
from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications, TimeLimit
from redis.backoff import NoBackoff
from redis.retry import Retry

from queueing.broker import StreamsBroker
from queueing.messages import QUEUE_NAME

REDIS_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
#: How often the cluster client itself retries a command that met a dead node or CLUSTERDOWN, reading
#: the slot map again in between; waiting out a whole failover is up to the caller (queueing/outages.py).
CLUSTER_RETRIES = 3


def connect_redis(redis_url: str, cluster: bool = False) -> redis.Redis | redis.RedisCluster:
    """Connect lazily: to one server through a pool that waits for a free connection, or to the cluster `redis_url` seeds."""
    timeouts = {"socket_connect_timeout": REDIS_TIMEOUT_S, "socket_timeout": REDIS_TIMEOUT_S * 2, "health_check_interval": 30}
    if cluster:
        return redis.RedisCluster.from_url(redis_url, retry=Retry(NoBackoff(), CLUSTER_RETRIES), max_connections=MAX_CONNECTIONS, **timeouts)
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=MAX_CONNECTIONS, timeout=REDIS_TIMEOUT_S, **timeouts)
    return redis.Redis(connection_pool=pool)


def build_broker(
    client: redis.Redis | redis.RedisCluster, on_dead_letter: Callable[[dramatiq.Message, str], None] | None = None,
    visibility_timeout_ms: int = 60_000, wait_replicas: int = 0, outage_retry_s: float = 0.0,
) -> StreamsBroker:
    """Build the Streams broker with the middleware the actors rely on and declare the job queue."""
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries(), CurrentMessage()]
    broker = StreamsBroker(
        client=client, middleware=middleware, on_dead_letter=on_dead_letter, visibility_timeout_ms=visibility_timeout_ms,
        wait_replicas=wait_replicas, outage_retry_s=outage_retry_s,
    )
    broker.declare_queue(QUEUE_NAME)
    return broker
