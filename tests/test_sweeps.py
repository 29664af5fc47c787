import time
import uuid
from datetime import timedelta

import dramatiq
import pytest
from dramatiq.common import current_millis
from dramatiq.middleware import SkipMessage

from actors.deferral import VendorGate
from queueing.breaker import CircuitBreaker
from queueing.connection import build_broker, connect_redis
from queueing.keys import delay_key
from queueing.messages import CALLBACK_QUEUE, QUEUE_NAME, enqueue_client_callback, enqueue_fetch, fetch_message
from queueing.ratelimit import NewJob, RateLimiter, vendor_key
from scheduler.sweeps import dispatch_waiting, purge_expired_jobs, queue_missed_callbacks, requeue_orphans, time_out_webhooks
from service.outcomes import Outcomes
from service.states import JobStatus
from service.store import overdue_callbacks, stale_jobs, utcnow
from tests.conftest import open_test_store, queued_messages
from tests.signing import new_secret
from vendors.registry import parse_registry

REGISTRY = parse_registry({"vendors": {
    "sync": {"mode": "sync", "url": "http://127.0.0.1:9/fetch", "timeout_s": 5},
    "async": {"mode": "async", "url": "http://127.0.0.1:9/fetch"},
    "patient": {"mode": "async", "url": "http://127.0.0.1:9/fetch", "webhook_retries": 1},
    "slow": {"mode": "sync", "url": "http://127.0.0.1:9/fetch", "rate_limit": "1/minute"},
}}, "test registry")
AN_HOUR = timedelta(hours=1)


@pytest.fixture
def calling_store(config):
    """Give a store with client callbacks on, keeping failed jobs' payloads for a retry."""
    job_store = open_test_store(config, keep_failed_payloads=True, callback_secret=new_secret("client callbacks"))
    yield job_store
    job_store.collection.database.client.close()


@pytest.fixture
def broker(config):
    broker = build_broker(connect_redis(config.redis_url))
    yield broker
    broker.close()


@pytest.fixture
def limiter(broker):
    return RateLimiter(broker.client, 20)


def new_job(store, vendor="sync"):
    request_id = str(uuid.uuid4())
    store.create(request_id, vendor, {"name": "n", "password": "pw"})
    return request_id


def age(store, request_id, by=AN_HOUR):
    """Pretend the job has not changed, and was due to start, `by` ago."""
    then = utcnow() - by
    store.collection.update_one({"_id": request_id}, {"$set": {"updated_at": then, "due_at": then}})


def wait_for_slot(store, request_id, slot_in):
    """Pretend the job was stored an hour ago behind a backlog, its slot `slot_in` from now."""
    store.collection.update_one({"_id": request_id}, {"$set": {"updated_at": utcnow() - AN_HOUR, "due_at": utcnow() + slot_in}})


def awaiting_job(store, vendor="async", overdue_by=timedelta(seconds=1)):
    request_id = new_job(store, vendor)
    store.claim(request_id, "m1")
    store.await_webhook(request_id, utcnow() - overdue_by, detail="accepted", attempt=1)
    return request_id


def stream_messages(redis_client):
    """Return (request_id, message_id) of every fetch message in the stream, oldest first."""
    messages = [dramatiq.Message.decode(fields[b"message"]) for _, fields in redis_client.xrange(QUEUE_NAME)]
    return [(message.args[0], message.message_id) for message in messages]


def test_an_overdue_webhook_times_the_job_out_with_a_reason(store, broker):
    request_id = awaiting_job(store)
    assert time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker) == {"re_requested": 0, "timed_out": 1}
    job = store.collection.find_one({"_id": request_id})
    assert job["status"] == "timed_out"
    assert job["error"].startswith("no webhook from async by ") and job["history"][-1]["detail"] == job["error"]
    assert "payload" not in job and job["expires_at"] > job["updated_at"]


def test_a_webhook_not_yet_due_is_left_awaiting(store, broker):
    request_id = awaiting_job(store, overdue_by=-timedelta(minutes=5))
    assert time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker) == {"re_requested": 0, "timed_out": 0}
    assert store.get(request_id)["status"] == "awaiting_webhook"


def test_a_vendor_with_webhook_retries_is_asked_again_before_the_job_times_out(store, broker, redis_client):
    request_id = awaiting_job(store, "patient")
    assert time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker) == {"re_requested": 1, "timed_out": 0}
    job = store.get(request_id)
    assert job["status"] == "queued" and job["rerequests"] == 1
    assert job["history"][-1]["detail"] == "no webhook from patient by the deadline; asking again (1 of 1)"
    [(queued_id, message_id)] = stream_messages(redis_client)
    assert queued_id == request_id and store.claim(request_id, message_id)["payload"]["password"] == "pw"
    store.await_webhook(request_id, utcnow() - timedelta(seconds=1), detail="accepted", attempt=1)
    assert time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker) == {"re_requested": 0, "timed_out": 1}
    assert store.get(request_id)["error"].endswith("after 2 requests")


def test_the_earlier_requests_webhook_still_completes_a_job_queued_again(store, broker):
    request_id = awaiting_job(store, "patient")
    time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker)
    assert store.complete(request_id, {"account": "late but fine"}, [], detail="webhook from patient")
    assert store.claim(request_id, "the re-request message") is None


def test_a_job_given_a_new_deadline_meanwhile_is_neither_timed_out_nor_asked_again(store):
    request_id = awaiting_job(store, "patient", overdue_by=-timedelta(minutes=5))
    assert not store.time_out(request_id, "stale view")
    assert not store.rerequest(request_id, "stale view")
    assert store.get(request_id)["status"] == "awaiting_webhook"


def test_the_timeout_sweep_works_in_bounded_batches(store, broker):
    ids = [awaiting_job(store) for _ in range(3)]
    assert time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker, limit=2)["timed_out"] == 2
    assert time_out_webhooks(store, Outcomes(store, None), REGISTRY, broker, limit=2)["timed_out"] == 1
    assert {store.get(i)["status"] for i in ids} == {"timed_out"}


def test_old_pending_and_queued_jobs_without_a_message_are_enqueued_again(store, broker, redis_client, limiter):
    pending, queued = new_job(store), new_job(store)
    store.leave_pending(pending, "enqueue failed")
    age(store, pending), age(store, queued)
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1)) == {"pending": 1, "queued": 1, "processing": 0}
    assert sorted(i for i, _ in stream_messages(redis_client)) == sorted([pending, queued])
    assert store.get(pending)["status"] == "queued"
    assert store.get(queued)["history"][-1]["event"] == "message lost; enqueued again by the orphan sweep"
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(0)) == {"pending": 0, "queued": 0, "processing": 0}


def test_jobs_whose_message_waits_in_the_stream_the_group_or_the_delay_set_are_left_alone(store, broker, redis_client, limiter):
    waiting, delivered, delayed = new_job(store), new_job(store), new_job(store)
    enqueue_fetch(broker, waiting)
    enqueue_fetch(broker, delivered)
    broker.ensure_group(QUEUE_NAME)
    redis_client.xreadgroup(broker.group, "a-worker", {QUEUE_NAME: ">"}, count=1)  # now pending in the group
    broker.enqueue(dramatiq.Message(queue_name=QUEUE_NAME, actor_name="fetch_job", args=(delayed,), kwargs={}, options={}),
                   delay=3_600_000)
    assert redis_client.zcard(delay_key(QUEUE_NAME)) == 1
    for request_id in (waiting, delivered, delayed):
        age(store, request_id)
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1)) == {"pending": 0, "queued": 0, "processing": 0}
    assert redis_client.xlen(QUEUE_NAME) == 2


def test_recent_queued_jobs_are_not_orphans_yet(store, broker, redis_client, limiter):
    new_job(store)
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1))["queued"] == 0
    assert stream_messages(redis_client) == []


def test_a_queued_job_is_not_an_orphan_before_its_slot_has_come(store, broker, redis_client, limiter):
    """Behind a long backlog a job's message waits in the delay set for hours: its age alone says nothing."""
    request_id = new_job(store)
    wait_for_slot(store, request_id, timedelta(minutes=10))
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1))["queued"] == 0
    age(store, request_id)  # its slot came an hour ago and no message was there for it
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1))["queued"] == 1
    assert [i for i, _ in stream_messages(redis_client)] == [request_id]


def in_line_behind_a_start(store, limiter):
    """Return two jobs for the slow vendor: the first dispatched (its message not sent here), the second in line."""
    first, second = new_job(store, "slow"), new_job(store, "slow")
    admissions = [limiter.admit(NewJob(REGISTRY.get("slow"), request_id)) for request_id in (first, second)]
    assert [a.dispatched for a in admissions] == [True, False]
    return first, second


def test_a_job_waiting_in_its_vendors_line_is_not_an_orphan(store, broker, limiter, redis_client):
    dispatched, in_line = in_line_behind_a_start(store, limiter)
    age(store, dispatched), age(store, in_line)
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1))["queued"] == 1
    assert [i for i, _ in stream_messages(redis_client)] == [dispatched]


def test_the_dispatch_sweep_sends_the_turn_nobody_passed_on(store, broker, limiter, redis_client):
    dispatched, in_line = in_line_behind_a_start(store, limiter)
    assert dispatch_waiting(limiter, REGISTRY, broker) == {"dispatched": 0}  # the first one's start passes the turn on
    redis_client.zrem(vendor_key("slow", "waiting"), dispatched)  # say its place went with nobody to pass the turn on
    assert dispatch_waiting(limiter, REGISTRY, broker) == {"dispatched": 1}
    [member] = redis_client.zrange(delay_key(QUEUE_NAME), 0, -1)  # due a minute after the start the first one took
    assert dramatiq.Message.decode(member.split(b"|", 1)[1]).args[0] == in_line


def test_the_orphan_sweep_reads_only_queued_jobs_whose_slot_is_past(store):
    """A vendor's backlog may hold tens of thousands of queued jobs: the sweep's query must not read them."""
    for request_id in [new_job(store) for _ in range(3)]:
        wait_for_slot(store, request_id, AN_HOUR)
    age(store, new_job(store))
    plan = store.collection.find(stale_jobs(JobStatus.QUEUED, timedelta(minutes=1))).explain()
    assert plan["executionStats"]["totalDocsExamined"] == 1


def test_every_transition_makes_the_job_due_from_then_in_its_new_state(store):
    """The sweeps time every state by due_at: a job claimed after waiting for its slot is timed from its claim."""
    request_id = new_job(store)
    wait_for_slot(store, request_id, AN_HOUR)
    store.claim(request_id, "m1")
    job = store.collection.find_one({"_id": request_id})
    assert job["due_at"] == job["updated_at"]
    assert abs(job["due_at"] - utcnow()) < timedelta(seconds=5)


def test_every_move_back_to_queued_makes_the_job_due_at_once(store):
    request_id = awaiting_job(store, "patient")
    wait_for_slot(store, request_id, AN_HOUR)
    assert store.rerequest(request_id, "no webhook by the deadline")
    assert abs(store.get(request_id)["due_at"] - utcnow()) < timedelta(seconds=5)


def test_a_queued_job_whose_message_the_gate_defers_is_due_when_the_message_is(store, broker):
    """Jobs enqueued again (a re-request, a retry) wait behind the backlog with no slot of their own."""
    slow = {"mode": "sync", "url": "http://127.0.0.1:9/fetch", "rate_limit": "1/minute"}
    registry = parse_registry({"vendors": {"slow": slow}}, "one call a minute")
    gate = VendorGate(registry, RateLimiter(broker.client, 20), CircuitBreaker(broker.client), store, Outcomes(store, None))
    first, second = new_job(store, "slow"), new_job(store, "slow")
    gate.before_process_message(broker, fetch_message(first, vendor="slow"))  # the minute's one call
    with pytest.raises(SkipMessage):
        gate.before_process_message(broker, fetch_message(second, vendor="slow"))
    assert store.get(second)["due_at"] > utcnow() + timedelta(seconds=50)
    assert abs(store.get(first)["due_at"] - utcnow()) < timedelta(seconds=5)


def test_a_job_whose_turn_in_line_comes_after_max_wait_fails_instead_of_starting(store, broker):
    brisk = {"mode": "sync", "url": "http://127.0.0.1:9/fetch", "rate_limit": "1/second", "max_wait_s": 1.5}
    registry = parse_registry({"vendors": {"brisk": brisk}}, "one call a second, a short wait")
    limiter = RateLimiter(broker.client, 20)
    gate = VendorGate(registry, limiter, CircuitBreaker(broker.client), store, Outcomes(store, None))
    first, second = new_job(store, "brisk"), new_job(store, "brisk")
    assert [limiter.admit(NewJob(registry.get("brisk"), i)).dispatched for i in (first, second)] == [True, False]
    time.sleep(1.6)  # the second waits in line longer than max_wait_s
    [turn] = RateLimiter(broker.client, 20, horizon_ms=86_400_000).dispatch(registry.get("brisk"))
    with pytest.raises(SkipMessage):
        gate.before_process_message(broker, fetch_message(second, vendor="brisk", since_ms=turn.joined_ms))
    job = store.get(second)
    assert job["status"] == "failed" and "its turn came after max_wait_s (1.5 s)" in job["error"]


def test_a_job_given_up_after_dispatch_passes_its_lease_to_the_next_in_line_at_once(store, broker):
    leased = {"mode": "sync", "url": "http://127.0.0.1:9/fetch", "rate_limit": "1000/second", "max_in_flight": 1, "max_wait_s": 1}
    registry = parse_registry({"vendors": {"leased": leased}}, "one call at a time, a short wait")
    limiter = RateLimiter(broker.client, 20)
    gate = VendorGate(registry, limiter, CircuitBreaker(broker.client), store, Outcomes(store, None))
    first, second = new_job(store, "leased"), new_job(store, "leased")
    assert [limiter.admit(NewJob(registry.get("leased"), i)).dispatched for i in (first, second)] == [True, False]
    late = fetch_message(first, vendor="leased", since_ms=current_millis() - 5_000)  # its turn came past max_wait_s
    with pytest.raises(SkipMessage):
        gate.before_process_message(broker, late)
    assert store.get(first)["status"] == "failed"
    assert set(queued_messages(broker.client)) == {second}  # no worker's release and no clock: the give-up sent it


def test_jobs_an_earlier_version_stored_are_dated_for_the_sweeps_by_each_migration(store, broker, limiter):
    """Earlier versions kept due_at on queued jobs only, if at all, and the sweeps' queries cannot see a missing field."""
    queued, processing = new_job(store), new_job(store)
    store.claim(processing, "m1")
    an_hour_ago = utcnow() - AN_HOUR
    store.collection.update_many({}, {"$unset": {"due_at": ""}, "$set": {"updated_at": an_hour_ago}})
    store.collection.drop_index("status_due_at")
    store.collection.create_index([("status", 1), ("updated_at", 1)], name="status_updated_at")
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(0)) == {"pending": 0, "queued": 0, "processing": 0}
    store.migrate()
    assert abs(store.collection.find_one({"_id": processing})["due_at"] - an_hour_ago) < timedelta(milliseconds=1)
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(0)) == {"pending": 0, "queued": 1, "processing": 1}
    # An old process still running after the first migration stores a job without one; the next migration dates it.
    late, waiting = new_job(store), new_job(store)
    store.collection.update_one({"_id": late}, {"$unset": {"due_at": ""}})
    wait_for_slot(store, waiting, AN_HOUR)
    store.migrate()
    assert store.collection.find_one({"_id": late})["due_at"] is not None
    assert store.get(waiting)["due_at"] > utcnow() + timedelta(minutes=59)  # a job with its slot keeps it


def test_a_processing_job_whose_message_was_lost_is_redelivered_under_the_same_message_id(store, broker, redis_client, limiter):
    lost, recent = new_job(store), new_job(store)
    store.claim(lost, "m-lost")
    store.claim(recent, "m-recent")
    age(store, lost)
    age(store, recent, timedelta(milliseconds=broker.visibility_timeout_ms))  # within visibility + vendor timeout
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1)) == {"pending": 0, "queued": 0, "processing": 1}
    assert stream_messages(redis_client) == [(lost, "m-lost")]
    assert store.claim(lost, "m-lost")["message_id"] == "m-lost"  # the redelivery may re-claim it


def test_a_job_a_worker_takes_while_the_orphan_sweep_looks_is_not_enqueued_again(store, broker, redis_client, monkeypatch, limiter):
    request_id = new_job(store)
    age(store, request_id)
    stale_ids = store.stale_ids

    def found_then_taken(status, older_than, limit):
        ids = list(stale_ids(status, older_than, limit))
        if request_id in ids:  # its message reaches a worker, which claims the job: the message is gone from the queue
            store.claim(request_id, "the job's own message")
        return iter(ids)

    monkeypatch.setattr(store, "stale_ids", found_then_taken)
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1)) == {"pending": 0, "queued": 0, "processing": 0}
    assert stream_messages(redis_client) == []
    assert [entry.get("state") for entry in store.get(request_id)["history"]] == ["queued", "processing"]


def test_the_orphan_sweep_works_in_bounded_batches_and_old_jobs_with_messages_do_not_hide_the_rest(store, broker, redis_client, limiter):
    for _ in range(3):
        age(store, new_job(store))
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1), limit=2)["queued"] == 2
    assert requeue_orphans(store, REGISTRY, broker, limiter, timedelta(minutes=1), limit=2)["queued"] == 1
    assert len(stream_messages(redis_client)) == 3


def time_out(store, request_id):
    store.await_webhook(request_id, utcnow() - timedelta(seconds=1), detail="accepted", attempt=1)
    return store.time_out(request_id, "no webhook")


@pytest.mark.parametrize("finish", [
    pytest.param(lambda store, i: store.complete(i, {"account": "xyz"}, [], detail="done"), id="complete"),
    pytest.param(lambda store, i: store.fail(i, "m1", "vendor rejected"), id="failed"),
    pytest.param(time_out, id="timed_out"),
])
def test_every_terminal_job_has_its_payload_erased_and_expires_after_the_retention(store, finish):
    request_id = new_job(store, "async")
    store.claim(request_id, "m1")
    assert finish(store, request_id)
    job = store.collection.find_one({"_id": request_id})
    assert "payload" not in job
    assert job["expires_at"] - job["updated_at"] == store.retention


def test_the_retention_sweep_deletes_only_finished_jobs_whose_retention_has_ended(store):
    expired, recent, kept_longer, waiting = (new_job(store) for _ in range(4))
    for request_id in (expired, recent, kept_longer):
        store.claim(request_id, "m1")
        store.fail(request_id, "m1", "vendor rejected")
    long_ago = utcnow() - store.retention - timedelta(minutes=1)
    dates = {
        expired: (long_ago, long_ago + store.retention),
        kept_longer: (long_ago, utcnow() + AN_HOUR),  # finished when the retention was longer
        waiting: (long_ago, long_ago),  # unchanged for long, with a past expires_at, but not finished
    }
    for request_id, (updated_at, expires_at) in dates.items():
        store.collection.update_one({"_id": request_id}, {"$set": {"updated_at": updated_at, "due_at": updated_at, "expires_at": expires_at}})
    assert purge_expired_jobs(store) == {"deleted": 1}
    assert store.collection.find_one({"_id": expired}) is None
    assert store.collection.count_documents({"_id": {"$in": [recent, kept_longer, waiting]}}) == 3
    assert purge_expired_jobs(store) == {"deleted": 0}


def test_the_indexes_earlier_versions_or_settings_used_are_dropped(store):
    """Each index the sweeps no longer read would still cost every insert and update."""
    assert not store.client_callbacks
    store.collection.create_index(
        [("callback_pending", 1), ("callback_due_at", 1)], name="callbacks_due", partialFilterExpression={"callback_pending": True},
    )
    store.collection.create_index(
        [("callback_pending", 1), ("finished_at", 1)], name="callbacks_pending", partialFilterExpression={"callback_pending": True},
    )
    store.collection.create_index("expires_at", name="retention_ttl", expireAfterSeconds=0)
    store.collection.create_index([("status", 1), ("updated_at", 1)], name="status_updated_at")
    store.collection.create_index(
        [("status", 1), ("due_at", 1)], name="queued_due_at", partialFilterExpression={"status": JobStatus.QUEUED.value},
    )
    store.migrate()
    assert set(store.collection.index_information()) == {"_id_", "status_due_at", "client_created_at"}


def finish_an_hour_ago(store, request_id):
    """Fail the job and date its finish, and its callback's due time, an hour back, past the callback sweep's grace."""
    store.claim(request_id, "m1")
    store.fail(request_id, "m1", "vendor rejected")
    store.collection.update_one({"_id": request_id}, {"$set": {"finished_at": utcnow() - AN_HOUR, "callback_due_at": utcnow() - AN_HOUR}})


def test_a_callback_that_could_not_be_queued_is_queued_by_the_sweep_once(calling_store, broker, redis_client):
    store = calling_store
    request_id, unfinished, plain = str(uuid.uuid4()), str(uuid.uuid4()), new_job(store)
    for job in (request_id, unfinished):  # the unfinished one has nothing to tell its client yet
        store.create(job, "sync", {"name": "n"}, callback_url="http://127.0.0.1:9/hook")
    for job in (request_id, plain):
        finish_an_hour_ago(store, job)  # nothing queued its callback: as if Redis had been down
    assert queue_missed_callbacks(store, broker, timedelta(minutes=1)) == {"queued": 1}
    [(_, fields)] = redis_client.xrange(CALLBACK_QUEUE)
    assert dramatiq.Message.decode(fields[b"message"]).args == (request_id,)
    assert queue_missed_callbacks(store, broker, timedelta(minutes=1)) == {"queued": 0}
    broker.flush(CALLBACK_QUEUE)  # that message is gone again (lost with Redis, say)
    # An operator's retry makes a new outcome: once the job finishes again, its callback is due again.
    assert store.retry(request_id, "retried by an operator")
    assert queue_missed_callbacks(store, broker, timedelta(minutes=1)) == {"queued": 0}
    finish_an_hour_ago(store, request_id)
    assert queue_missed_callbacks(store, broker, timedelta(minutes=1)) == {"queued": 1}


def test_the_callback_sweep_reads_only_jobs_whose_callback_is_pending(calling_store):
    """Finished jobs pile up for the whole retention: the sweep's query must not read them."""
    for job in [new_job(calling_store) for _ in range(3)]:
        finish_an_hour_ago(calling_store, job)
    finished, unfinished = str(uuid.uuid4()), str(uuid.uuid4())
    for job in (finished, unfinished):
        calling_store.create(job, "sync", {"name": "n"}, callback_url="http://127.0.0.1:9/hook")
    finish_an_hour_ago(calling_store, finished)
    plan = calling_store.collection.find(overdue_callbacks(timedelta(minutes=1))).explain()
    assert plan["executionStats"]["totalDocsExamined"] == 1


def test_a_callback_queued_as_its_job_finishes_leaves_nothing_for_the_sweep(calling_store, broker, redis_client):
    request_id = str(uuid.uuid4())
    calling_store.create(request_id, "sync", {"name": "n"}, callback_url="http://127.0.0.1:9/hook")
    calling_store.claim(request_id, "m1")
    assert calling_store.fail(request_id, "m1", "vendor rejected")  # the final state makes its callback due now
    Outcomes(calling_store, broker).finished(request_id, JobStatus.FAILED)
    assert redis_client.xlen(CALLBACK_QUEUE) == 1
    assert calling_store.collection.find_one({"_id": request_id})["callback_due_at"] > utcnow() - timedelta(minutes=1)
    assert queue_missed_callbacks(calling_store, broker, timedelta(minutes=1)) == {"queued": 0}


def test_a_callback_whose_message_was_lost_is_queued_again_once_overdue_and_one_delivered_never(calling_store, broker, redis_client):
    lost, delivered = str(uuid.uuid4()), str(uuid.uuid4())
    for job in (lost, delivered):
        calling_store.create(job, "sync", {"name": "n"}, callback_url="http://127.0.0.1:9/hook")
        finish_an_hour_ago(calling_store, job)
        # Its first attempt failed, the next was due two minutes ago, and Redis lost the message meanwhile.
        calling_store.callback_attempted(calling_store.get(job), 1, "client callback answered 503", next_at=utcnow() - timedelta(minutes=2))
    assert calling_store.callback_attempted(calling_store.get(delivered), 2, "client callback delivered", delivered=True)
    assert queue_missed_callbacks(calling_store, broker, timedelta(minutes=1)) == {"queued": 1}
    [(_, fields)] = redis_client.xrange(CALLBACK_QUEUE)
    assert dramatiq.Message.decode(fields[b"message"]).args == (lost,)
    assert queue_missed_callbacks(calling_store, broker, timedelta(minutes=1)) == {"queued": 0}  # due now: not overdue


def test_an_overdue_callback_still_waiting_in_the_queue_is_not_queued_twice(calling_store, broker, redis_client):
    request_id = str(uuid.uuid4())
    calling_store.create(request_id, "sync", {"name": "n"}, callback_url="http://127.0.0.1:9/hook")
    finish_an_hour_ago(calling_store, request_id)
    enqueue_client_callback(broker, request_id)  # behind a backlog of slow endpoints, not lost
    assert queue_missed_callbacks(calling_store, broker, timedelta(minutes=1)) == {"queued": 0}
    assert redis_client.xlen(CALLBACK_QUEUE) == 1
