"""Taking in new jobs in batches, against real Redis and MongoDB-wire servers."""

import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import pytest

from actors.broker import delay_key, iter_stream
from actors.queue import QUEUE_NAME
from actors.ratelimit import RateLimiter
from actors.setup import build_broker, connect_redis
from service.intake import Intake, Submission
from service.waiting import Waiting
from vendors.registry import parse_registry

# Ten a second: the first ten start at once, every further one waits its turn a tenth of a second apart.
REGISTRY = parse_registry(tomllib.loads("""
[vendors.paced]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "10/second"
"""), "test registry")


@pytest.fixture
def intake(store, config):
    broker = build_broker(connect_redis(config.redis_url))
    yield Intake(store, REGISTRY, Waiting(RateLimiter(broker.client, 20), REGISTRY), broker)
    broker.close()


def submission(store, request_id=None):
    request_id = request_id or str(uuid.uuid4())
    return Submission(request_id, store.new_job(request_id, {"name": "n", "password": "pw"}))


def queued_messages(redis_client):
    """Return {request_id: (vendor option, due ms or None)} of every fetch message, in the stream or delayed."""
    found = {}
    for _, fields in iter_stream(redis_client, QUEUE_NAME):
        message = dramatiq.Message.decode(fields[b"message"])
        found[message.args[0]] = (message.options["vendor"], None)
    for member, due_ms in redis_client.zrange(delay_key(QUEUE_NAME), 0, -1, withscores=True):
        message = dramatiq.Message.decode(member.split(b"|", 1)[1])
        assert message.args[0] not in found, "a job was enqueued twice"
        found[message.args[0]] = (message.options["vendor"], due_ms)
    return found


def test_concurrent_submissions_are_each_stored_once_and_enqueued_for_their_own_slot(intake, store, redis_client):
    flushes, insert_many = [], store.insert_many
    store.insert_many = lambda jobs: flushes.append(len(jobs)) or insert_many(jobs)
    with ThreadPoolExecutor(max_workers=16) as pool:
        taken = list(pool.map(lambda _: intake(submission(store)), range(60)))
    request_ids = [s.request_id for s in taken]
    assert sum(flushes) == 60 and len(flushes) < 60, "submissions in flight together shared no insert"
    assert store.collection.count_documents({"_id": {"$in": request_ids}, "status": "queued", "vendor": "paced"}) == 60
    messages = queued_messages(redis_client)
    assert set(messages) == set(request_ids)
    assert sum(due is None for _, due in messages.values()) == 10  # the first window's ten start at once
    # Every job was told the wait its message has: later slots, later messages.
    delayed = sorted((s.admission.wait_s, messages[s.request_id][1]) for s in taken if s.admission.delay_ms)
    assert [due for _, due in delayed] == sorted(due for _, due in delayed)


def test_a_job_that_cannot_be_stored_fails_alone_and_gives_its_slot_back(intake, store, redis_client):
    taken = str(uuid.uuid4())
    store.create(taken, "paced", {"name": "first"})
    duplicate, fresh = submission(store, taken), submission(store)
    refused, stored = intake._take_in([duplicate, fresh])  # one batch
    assert "duplicate key" in str(refused).lower() and stored is fresh
    assert redis_client.zscore("{vendor:paced}:slots", taken) is None
    assert redis_client.zscore("{vendor:paced}:slots", fresh.request_id) is not None
    assert set(queued_messages(redis_client)) == {fresh.request_id}
    assert store.get(taken)["status"] == "queued"
