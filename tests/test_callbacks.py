"""Client callback deliveries: each attempt recorded, retried on the schedule, stopped by 410 or the schedule's end."""

import uuid

import dramatiq
import pytest

from actors.callbacks import RETRY_SCHEDULE_S, deliver, retry_wait_s
from devtools.stack import CallbackReceiver
from service.clients.store import ClientStore
from service.egress import EgressPolicy, parse_networks
from service.store import CALLBACK_GIVEN_UP
from tests.hostile_endpoints import HostileEndpoint
from tests.signing import new_secret

SECRET = new_secret("client callbacks")
LOOPBACK = EgressPolicy(parse_networks("127.0.0.1/32"))


def finished_job(store, callback_url, **fields):
    request_id = str(uuid.uuid4())
    store.create(request_id, "sync", {"name": "n"}, callback_url=callback_url)
    store.claim(request_id, "m1")
    store.fail(request_id, "m1", "vendor rejected")
    if fields:
        store.collection.update_one({"_id": request_id}, {"$set": fields})
    return request_id


def answering(status_line: bytes):
    return lambda endpoint, connection: endpoint.send(connection, status_line + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def receiver():
    receiver = CallbackReceiver((410,))
    yield receiver
    receiver.close()


def test_a_410_stops_the_callback_for_good(store, receiver):
    request_id = finished_job(store, receiver.url)
    deliver(store, LOOPBACK, ClientStore(store.collection.database, store.cipher), SECRET, request_id)
    deliver(store, LOOPBACK, ClientStore(store.collection.database, store.cipher), SECRET, request_id)  # a duplicate message: nothing left to send
    job = store.collection.find_one({"_id": request_id})
    assert len(receiver.calls) == 1 and job["callback_due_at"] == CALLBACK_GIVEN_UP and "callback_delivered_at" not in job
    assert job["history"][-1]["event"] == "client callback answered 410 Gone; not retried"


def test_a_failed_attempt_is_recorded_and_retried_no_sooner_than_the_clients_retry_after(store):
    endpoint = HostileEndpoint(answering(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600"))
    try:
        request_id = finished_job(store, endpoint.url)
        with pytest.raises(dramatiq.Retry) as retry:
            deliver(store, LOOPBACK, ClientStore(store.collection.database, store.cipher), SECRET, request_id)
    finally:
        endpoint.close()
    assert retry.value.delay == 3_600_000
    job = store.collection.find_one({"_id": request_id})
    assert job["callback_pending"] and job["callback_attempts"] == 1
    assert job["history"][-1]["event"] == "client callback answered 503 (attempt 1); next in 3600 s"


def test_the_schedule_spans_a_day_with_jitter():
    assert sum(RETRY_SCHEDULE_S) >= 24 * 3600
    waits = [retry_wait_s(2, None) for _ in range(200)]
    assert 270 <= min(waits) < max(waits) <= 330  # five minutes, give or take a tenth


def test_the_callback_is_given_up_when_the_schedule_runs_out(store):
    endpoint = HostileEndpoint(answering(b"HTTP/1.1 500 Internal Server Error"))
    try:
        request_id = finished_job(store, endpoint.url, callback_attempts=len(RETRY_SCHEDULE_S))
        deliver(store, LOOPBACK, ClientStore(store.collection.database, store.cipher), SECRET, request_id)  # no Retry: the last attempt
    finally:
        endpoint.close()
    job = store.collection.find_one({"_id": request_id})
    assert job["callback_due_at"] == CALLBACK_GIVEN_UP and job["callback_attempts"] == len(RETRY_SCHEDULE_S) + 1
    assert job["history"][-1]["event"] == "client callback answered 500; gave up after 8 attempts"


def test_a_duplicate_delivery_records_nothing_and_schedules_no_second_chain(store):
    endpoint = HostileEndpoint(answering(b"HTTP/1.1 503 Service Unavailable"))
    try:
        request_id = finished_job(store, endpoint.url)
        read_before = store.get(request_id)
        with pytest.raises(dramatiq.Retry):
            deliver(store, LOOPBACK, ClientStore(store.collection.database, store.cipher), SECRET, request_id)
        # A second message for the same attempt, read before the first was recorded, loses the race.
        assert not store.callback_attempted(read_before, 1, "client callback answered 503 (attempt 1)", next_at=read_before["created_at"])
    finally:
        endpoint.close()
    assert store.get(request_id)["callback_attempts"] == 1


def test_an_operators_retry_since_the_delivery_began_keeps_its_own_callback_pending(store, receiver):
    request_id = finished_job(store, receiver.url)
    read_before = store.get(request_id)
    store.collection.update_one({"_id": request_id}, {"$set": {"retries": 1}})  # an operator retried the job meanwhile
    assert not store.callback_attempted(read_before, 1, "client callback delivered", delivered=True)
    assert store.get(request_id)["callback_pending"]
