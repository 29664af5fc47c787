import uuid

import dramatiq
import pytest

from queueing.connection import build_broker, connect_redis
from queueing.messages import CALLBACK_QUEUE
from service.outcomes import Outcomes
from service.states import JobStatus


@pytest.fixture
def broker(config):
    broker = build_broker(connect_redis(config.redis_url))
    yield broker
    broker.close()


def finished_job(store, callback_url=None):
    request_id = str(uuid.uuid4())
    store.create(request_id, "sync", {"name": "n"}, callback_url=callback_url)
    store.claim(request_id, "m1")
    assert store.complete(request_id, {"account": "xyz"}, [], detail="done", attempt=1)
    return request_id


def queued_callbacks(redis_client):
    return [dramatiq.Message.decode(fields[b"message"]).args for _, fields in redis_client.xrange(CALLBACK_QUEUE)]


def test_a_finished_job_that_asked_for_a_callback_has_it_queued_once_and_due_now(store, broker, redis_client):
    request_id = finished_job(store, callback_url="http://127.0.0.1:9/hook")
    Outcomes(store, broker).finished(request_id, JobStatus.COMPLETE)
    assert queued_callbacks(redis_client) == [(request_id,)]
    job = store.collection.find_one({"_id": request_id})
    assert job["callback_pending"] and job["callback_due_at"] >= job["finished_at"]  # pending until delivered


def test_no_callback_is_queued_when_callbacks_are_off_or_not_asked_for(store, broker, redis_client):
    Outcomes(store, None).finished(finished_job(store, callback_url="http://127.0.0.1:9/hook"), JobStatus.COMPLETE)
    Outcomes(store, broker).finished(finished_job(store), JobStatus.COMPLETE)
    assert queued_callbacks(redis_client) == []


def test_a_job_read_before_is_reported_as_read_without_reading_it_again(store, broker, redis_client):
    request_id = finished_job(store)
    job = store.get(request_id)
    job["callback_url"] = "http://127.0.0.1:9/hook"  # only the caller's copy has one
    Outcomes(store, broker).finished(request_id, JobStatus.COMPLETE, job=job)
    assert queued_callbacks(redis_client) == [(request_id,)]


def test_an_outage_of_redis_leaves_the_callback_to_the_sweep_and_the_job_finished(store, redis_client):
    request_id = finished_job(store, callback_url="http://127.0.0.1:9/hook")
    unreachable = build_broker(connect_redis("redis://127.0.0.1:9/0"))
    Outcomes(store, unreachable).finished(request_id, JobStatus.COMPLETE)
    job = store.collection.find_one({"_id": request_id})
    assert job["status"] == "complete" and job["callback_pending"] is True
