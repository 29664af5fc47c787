"""Writes that count only once replicas hold them: sent on the connection that owns the key, then WAIT.

WAIT covers the writes made on its own connection, so in a cluster the commands go straight to the
primary that owns the key's slot (the cluster client would send WAIT to some other node).
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.client import Pipeline

from queueing.outages import OUTAGE_ERRORS, NotReplicated

#: How long one write waits for its replicas before it counts as not replicated.
WAIT_TIMEOUT_MS = 100


def owner_connection(client: redis.Redis | redis.RedisCluster, key: str) -> redis.Redis:
    """Return the connection to the primary that owns a key (the client itself, outside a cluster)."""
    if isinstance(client, redis.RedisCluster):
        return client.get_node_from_key(key).redis_connection
    return client


def replicated(client: redis.Redis | redis.RedisCluster, key: str, replicas: int, queue: Callable[[Pipeline], object]) -> list:
    """Send the commands `queue` adds to a pipeline, all on `key`'s slot, then WAIT for `replicas`.

    Return the commands' replies, errors included; raise NotReplicated if too few replicas
    acknowledged them in time (they are applied on the primary all the same).
    """
    try:
        with owner_connection(client, key).pipeline(transaction=False) as pipe:
            queue(pipe)
            pipe.execute_command("WAIT", replicas, WAIT_TIMEOUT_MS)
            *replies, acknowledged = pipe.execute(raise_on_error=False)
    except OUTAGE_ERRORS:
        refresh_slots(client)
        raise
    moved = next((reply for reply in replies if isinstance(reply, redis.exceptions.MovedError)), None)
    if moved is not None:
        refresh_slots(client)
        raise moved
    if isinstance(acknowledged, Exception):
        raise acknowledged
    if acknowledged < replicas:
        raise NotReplicated(f"{acknowledged} of {replicas} replicas acknowledged a write to {key!r} within {WAIT_TIMEOUT_MS} ms")
    return replies


def refresh_slots(client: redis.Redis | redis.RedisCluster) -> None:
    """Have a cluster client read again which node owns which slot (after a failover)."""
    if isinstance(client, redis.RedisCluster):
        try:
            client.nodes_manager.initialize()
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            pass  # no node answers yet: the next attempt tries again
