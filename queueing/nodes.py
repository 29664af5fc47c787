"""Send commands straight to the node that owns their keys, in one pipeline per node.

A cluster client refuses to pipeline scripts, and sends WAIT to some node other than the one that
took the writes; a pipeline on the owning primary's own connection does both right. Outside a
cluster the owner is the one server.
"""

from __future__ import annotations

from collections.abc import Callable
from weakref import WeakSet

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from queueing.outages import OUTAGE_ERRORS, NotReplicated

#: How long one write waits for its replicas before it counts as not replicated: long enough for a
#: replica on a busy host.
WAIT_TIMEOUT_MS = 500
#: How long once a node's last write went unreplicated (a shard without a replica, as after a
#: failover): short, so that its writes are refused promptly until a replica acknowledges again.
WAIT_WITHOUT_REPLICA_MS = 100

# The primaries whose latest waited write no replica acknowledged in time.
unreplicated: WeakSet[redis.Redis] = WeakSet()

ScriptCall = tuple[list[str], list]  # the keys and the arguments of one script run


def owner_connection(client: redis.Redis | redis.RedisCluster, key: str) -> redis.Redis:
    """Return the connection to the primary that owns a key (the client itself, outside a cluster)."""
    if isinstance(client, redis.RedisCluster):
        return client.get_node_from_key(key).redis_connection
    return client


def refresh_slots(client: redis.Redis | redis.RedisCluster) -> None:
    """Have a cluster client read again which node owns which slot (after a failover)."""
    if isinstance(client, redis.RedisCluster):
        try:
            client.nodes_manager.initialize()
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            pass  # no node answers yet: the next attempt tries again


def on_owner(client: redis.Redis | redis.RedisCluster, key: str, queue: Callable[[Pipeline], object], replicas: int = 0) -> list:
    """Send the commands `queue` adds to a pipeline, all on `key`'s slot, in one round trip; return their replies.

    With replicas, WAIT for that many after the commands, and raise NotReplicated if fewer
    acknowledged them in time (they are applied on the primary all the same). The replies keep
    their errors, except that a moved slot or a lost node is raised after refreshing the slot map.
    """
    owner = owner_connection(client, key)
    timeout_ms = WAIT_WITHOUT_REPLICA_MS if owner in unreplicated else WAIT_TIMEOUT_MS
    try:
        with owner.pipeline(transaction=False) as pipe:
            queue(pipe)
            if replicas:
                pipe.execute_command("WAIT", replicas, timeout_ms)
            replies = pipe.execute(raise_on_error=False)
    except OUTAGE_ERRORS:
        refresh_slots(client)
        raise
    outage = next((reply for reply in replies if isinstance(reply, OUTAGE_ERRORS)), None)
    if outage is not None:
        refresh_slots(client)
        raise outage
    if not replicas:
        return replies
    *replies, acknowledged = replies
    if acknowledged < replicas:
        unreplicated.add(owner)
        raise NotReplicated(f"{acknowledged} of {replicas} replicas acknowledged a write to {key!r} within {timeout_ms} ms")
    unreplicated.discard(owner)
    return replies


def run_script_calls(client: redis.Redis | redis.RedisCluster, script: Script, calls: list[ScriptCall], replicas: int = 0) -> list:
    """Run a script once per call, one round trip per node that owns calls; load it where a node lacks it.

    Return the replies in order; raise the first error among them.
    """
    by_owner: dict[str, list[int]] = {}
    for index, (keys, _args) in enumerate(calls):
        by_owner.setdefault(owner_name(client, keys[0]), []).append(index)
    replies: list = [None] * len(calls)
    for indexes in by_owner.values():
        for index, reply in zip(indexes, run_on_owner(client, script, [calls[i] for i in indexes], replicas)):
            replies[index] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def run_on_owner(client: redis.Redis | redis.RedisCluster, script: Script, calls: list[ScriptCall], replicas: int) -> list:
    """Run a script once per call on the node that owns all the calls' keys."""
    def send(some: list[ScriptCall]) -> list:
        return on_owner(client, some[0][0][0], lambda pipe: [pipe.evalsha(script.sha, len(keys), *keys, *args) for keys, args in some], replicas)

    replies = send(calls)
    # Only the calls that found no script run again: another client may have loaded it meanwhile.
    lost = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
    if lost:
        owner_connection(client, calls[0][0][0]).script_load(script.script)
        for i, reply in zip(lost, send([calls[i] for i in lost])):
            replies[i] = reply
    return replies


def owner_name(client: redis.Redis | redis.RedisCluster, key: str) -> str:
    """Name the node that owns a key."""
    return client.get_node_from_key(key).name if isinstance(client, redis.RedisCluster) else ""
