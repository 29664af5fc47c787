"""The broker suite again, on a Valkey cluster, every write waiting for one replica."""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from dramatiq.errors import ConnectionClosed

from queueing.nodes import WAIT_TIMEOUT_MS, WAIT_WITHOUT_REPLICA_MS
from tests.conftest import flushed
from tests.test_broker import *  # noqa: F401,F403 - the same tests, with the fixtures below
from tests.test_broker import QUEUE, new_message, test_consumer_raises_connection_closed_when_redis_is_unreachable

pytestmark = pytest.mark.cluster
# It builds its own client on a closed port: nothing about a cluster.
del test_consumer_raises_connection_closed_when_redis_is_unreachable
# It expects that no replica acknowledges: here one does.
del test_a_write_no_replica_acknowledged_is_refused_and_ridden_out_no_longer_than_asked  # noqa: F821


@pytest.fixture
def redis_url(valkey_cluster, monkeypatch):
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    return valkey_cluster.url


@pytest.fixture
def redis_client(redis_url):
    """Give a cluster client on flushed primaries, flushed again afterwards."""
    yield from flushed(redis.RedisCluster.from_url(redis_url))


@pytest.fixture
def broker_options() -> dict:
    return {"wait_replicas": 1}


@contextlib.contextmanager
def paused(server, for_s: float | None = None) -> Iterator[None]:
    """Stop a server's process (as a busy host deschedules it), for `for_s` or until the block ends."""
    resume = threading.Timer(for_s or 0, os.kill, (server.process.pid, signal.SIGCONT))
    try:
        os.kill(server.process.pid, signal.SIGSTOP)
        if for_s is not None:
            resume.start()
        yield
    finally:
        resume.cancel()
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_write_waits_out_a_replica_slow_for_a_moment_and_not_long_for_one_that_is_gone(broker, valkey_cluster, redis_client):
    replica = valkey_cluster.replica_of(valkey_cluster.node_serving(QUEUE))

    def enqueue_s() -> float:
        started = time.monotonic()
        broker.enqueue(new_message(1))  # this suite rides out nothing: the one WAIT must see the replica
        return time.monotonic() - started

    with paused(replica, for_s=0.15):
        assert enqueue_s() >= 0.15  # it waited for the replica
    with paused(replica):  # gone: the first write waits in full, the next one briefly
        with pytest.raises(ConnectionClosed, match=f"within {WAIT_TIMEOUT_MS} ms"):
            enqueue_s()
        with pytest.raises(ConnectionClosed, match=f"within {WAIT_WITHOUT_REPLICA_MS} ms"):
            enqueue_s()
    enqueue_s()  # back: acknowledged, so a slow moment is waited out again
    with paused(replica, for_s=0.15):
        assert enqueue_s() >= 0.15
    assert redis_client.xlen(QUEUE) == 5
