"""The broker suite again, on a Valkey cluster, every write waiting for one replica."""

import os
import signal
import threading
import time

import pytest
import redis

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


def test_a_write_waits_out_a_replica_that_is_slow_for_a_moment(broker, valkey_cluster, redis_client):
    replica = valkey_cluster.replica_of(valkey_cluster.node_serving(QUEUE))
    os.kill(replica.process.pid, signal.SIGSTOP)  # as a replica is, descheduled on a busy host
    resume = threading.Timer(0.15, os.kill, (replica.process.pid, signal.SIGCONT))
    started = time.monotonic()
    resume.start()
    try:
        broker.enqueue(new_message(1))  # this suite rides out nothing: the one WAIT must see the replica back
    finally:
        resume.cancel()
        os.kill(replica.process.pid, signal.SIGCONT)
    assert time.monotonic() - started >= 0.15  # it did wait for the replica
    assert redis_client.xlen(QUEUE) == 1
