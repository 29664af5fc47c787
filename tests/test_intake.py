"""Taking in new jobs in batches, against real Redis and MongoDB-wire servers."""

import threading
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from devtools.stack import wait_until
from queueing.connection import build_broker, connect_redis
from queueing.ratelimit import RateLimiter
from service.clients.store import Client
from service.intake import Intake, Submission
from service.store import PUBLIC_CLIENT
from service.waiting import Waiting
from tests.conftest import queued_messages
from vendors.registry import parse_registry

# Ten a minute: the first ten start at once, every further one waits in line, turns six seconds apart.
# A full vendor sends new jobs on to the next one in turn.
REGISTRY = parse_registry(tomllib.loads("""
[vendors.paced]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "10/minute"

[vendors.full]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "1/minute"
max_backlog = 0
"""), "test registry")


@pytest.fixture
def intake(store, config):
    broker = build_broker(connect_redis(config.redis_url))
    yield Intake(store, REGISTRY, Waiting(RateLimiter(broker.client, 20), REGISTRY, broker), broker)
    broker.close()


def pinned(store, vendor_name="paced"):
    job = submission(store)
    job.pinned = REGISTRY.get(vendor_name)
    return job


def submission(store, request_id=None):
    request_id = request_id or str(uuid.uuid4())
    return Submission(request_id, Client(PUBLIC_CLIENT), store.new_job(request_id, {"name": "n", "password": "pw"}))


def test_concurrent_submissions_are_each_stored_once_and_enqueued_for_their_own_slot(intake, store, redis_client):
    release, flushes, insert_many = threading.Event(), [], store.insert_many

    def held_insert_many(jobs):
        flushes.append(len(jobs))
        release.wait(5)  # hold the first flush until the other submissions wait behind it
        return insert_many(jobs)

    store.insert_many = held_insert_many
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(intake, pinned(store)) for _ in range(60)]
        # Every thread's submission is in the held flush or waiting behind it.
        wait_until(lambda: flushes and flushes[0] + intake._batch._waiting().qsize() == 16, 10, "the others to wait")
        release.set()
        taken = [future.result(timeout=20) for future in futures]
    request_ids = [s.request_id for s in taken]
    assert sum(flushes) == 60 and len(flushes) < 60, "submissions in flight together shared no insert"
    assert store.collection.count_documents({"_id": {"$in": request_ids}, "status": "queued", "vendor": "paced"}) == 60
    messages = queued_messages(redis_client)
    # The first window's ten start at once; the others wait in the vendor's line, with no message until their turn.
    assert len(messages) == 10 and all(due is None for _, due in messages.values())
    assert RateLimiter(redis_client, 20).line(REGISTRY.get("paced")) == set(request_ids) - set(messages)


def test_each_job_is_stored_due_when_its_start_or_turn_is_expected(intake, store, redis_client):
    """The orphan sweep times a queued job from its start, so the store must know it."""
    taken = [intake(pinned(store)) for _ in range(12)]  # ten start now, the next two wait in line 6 and 12 s
    messages = queued_messages(redis_client)
    assert {job.request_id for job in taken[:10]} == set(messages)
    for n, job in enumerate(taken):
        stored = store.collection.find_one({"_id": job.request_id})
        expected = stored["created_at"] + timedelta(seconds=6 * max(n - 9, 0))
        assert abs(stored["due_at"] - expected) < timedelta(seconds=1)


def test_unpinned_jobs_refused_by_a_full_vendor_go_to_the_next_one_in_the_same_batch(intake, store, redis_client):
    batch = [submission(store) for _ in range(4)]
    assert intake._take_in(batch) == batch  # none refused, though every other one was offered to the full vendor first
    assert {s.vendor.name for s in batch} == {"paced"}
    assert set(queued_messages(redis_client)) == {s.request_id for s in batch}


def test_a_job_that_cannot_be_stored_fails_alone_and_gives_its_slot_back(intake, store, redis_client):
    taken = str(uuid.uuid4())
    store.create(taken, "paced", {"name": "first"})
    duplicate, fresh = submission(store, taken), submission(store)
    refused, stored = intake._take_in([duplicate, fresh])  # one batch
    assert "duplicate key" in str(refused).lower() and stored is fresh
    assert redis_client.zscore("{vendor:paced}:waiting", taken) is None
    assert redis_client.zscore("{vendor:paced}:waiting", fresh.request_id) is not None
    assert set(queued_messages(redis_client)) == {fresh.request_id}
    assert store.get(taken)["status"] == "queued"


def test_jobs_of_one_batch_that_cannot_be_stored_pass_no_lease_to_one_another(store, config, redis_client):
    leased = parse_registry({"vendors": {"leased": {
        "mode": "sync", "url": "http://127.0.0.1:9/fetch", "rate_limit": "1000/second", "max_in_flight": 1,
    }}}, "one call at a time")
    broker = build_broker(connect_redis(config.redis_url))
    intake = Intake(store, leased, Waiting(RateLimiter(broker.client, 20), leased, broker), broker)
    batch = [submission(store, str(uuid.uuid4())) for _ in range(2)]
    for job in batch:
        store.create(job.request_id, "leased", {"name": "stored before"})  # so that the batch's inserts fail
        job.pinned = leased.get("leased")
    intake._take_in(batch)
    assert [job.admission.dispatched for job in batch] == [True, False]  # the first took the only lease
    assert all("duplicate key" in str(job.error).lower() for job in batch)
    # The first one's lease went to no one: the second had left the line before the first withdrew.
    assert queued_messages(redis_client) == {}
    assert redis_client.zcard("{vendor:leased}:inflight") == 0 and redis_client.zcard("{vendor:leased}:fair") == 0
    broker.close()
