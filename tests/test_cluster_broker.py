"""The broker suite again, on a Valkey cluster, every write waiting for one replica."""

import pytest
import redis

from tests.conftest import flushed
from tests.test_broker import *  # noqa: F401,F403 - the same tests, with the fixtures below
from tests.test_broker import test_consumer_raises_connection_closed_when_redis_is_unreachable

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
