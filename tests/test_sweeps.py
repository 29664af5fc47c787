import uuid
from datetime import timedelta
from functools import partial

import dramatiq
import pytest

from actors.queue import QUEUE_NAME, enqueue_fetch
from actors.setup import build_broker, connect_redis
from scheduler.sweeps import requeue_pending
from service.states import JobStatus


@pytest.fixture
def broker(config):
    broker = build_broker(connect_redis(config.redis_url))
    yield broker
    broker.close()


def pending_job(store):
    request_id = str(uuid.uuid4())
    store.create(request_id, "sync", {"name": "n"})
    store.transition(request_id, JobStatus.PENDING, allowed_from=frozenset({JobStatus.QUEUED}))
    return request_id


def queued_request_ids(redis_client):
    return [dramatiq.Message.decode(fields[b"message"]).args[0] for _, fields in redis_client.xrange(QUEUE_NAME)]


def test_pending_sweep_enqueues_old_pending_jobs_once(store, broker, redis_client):
    request_id = pending_job(store)
    assert requeue_pending(store, partial(enqueue_fetch, broker), timedelta(0)) == 1
    assert store.get(request_id)["status"] == "queued"
    assert store.get(request_id)["history"][-1]["detail"] == "enqueued by the pending sweep"
    assert queued_request_ids(redis_client) == [request_id]
    assert requeue_pending(store, partial(enqueue_fetch, broker), timedelta(0)) == 0
    assert queued_request_ids(redis_client) == [request_id]


def test_pending_sweep_leaves_recent_pending_jobs_alone(store, broker, redis_client):
    request_id = pending_job(store)
    assert requeue_pending(store, partial(enqueue_fetch, broker), timedelta(minutes=5)) == 0
    assert store.get(request_id)["status"] == "pending"
    assert queued_request_ids(redis_client) == []
