"""What the dashboard reads and does, against real Redis and MongoDB: counts, vendors, failures, actions."""

from functools import partial

import dramatiq
import orjson
import pytest

from actors.callbacks import deliver
from devtools.stack import CallbackReceiver
from queueing.breaker import CircuitBreaker
from queueing.connection import build_broker
from queueing.deadletters import list_dead_letters
from queueing.keys import dead_key
from queueing.lease import LeaderLease
from queueing.messages import CALLBACK_QUEUE, FETCH_ACTOR, QUEUE_NAME, enqueue_fetch
from queueing.ratelimit import RateLimiter
from scheduler.runs import run_if_leader
from scheduler.sweeps import request_ids_in_queue
from service.clients.store import ClientStore
from service.dashboard.actions import OperatorActions
from service.dashboard.queries import DashboardQueries
from service.egress import EgressPolicy, parse_networks
from service.states import JobStatus
from tests.signing import new_secret
from vendors.registry import parse_registry

REGISTRY = {"vendors": {
    "sync": {"mode": "sync", "url": "http://127.0.0.1:1/fetch", "rate_limit": "10/minute", "breaker_failures": 2},
    "other": {"mode": "sync", "url": "http://127.0.0.1:2/fetch"},
}}
PAYLOAD = {"name": "Ann", "password": "hunter2-secret"}
CALLBACK_SECRET = new_secret("client callbacks")
LOOPBACK_ALLOWED = EgressPolicy(parse_networks("127.0.0.1/32"))


@pytest.fixture
def parts(keeping_store, redis_client):
    registry = parse_registry(REGISTRY, "test")
    broker = build_broker(redis_client)
    limiter = RateLimiter(redis_client, 100)
    queries = DashboardQueries(keeping_store, registry, limiter, CircuitBreaker(redis_client), broker)
    actions = OperatorActions(keeping_store, broker, partial(enqueue_fetch, broker))
    return registry, broker, limiter, queries, actions


def failed_job(store, request_id, vendor="sync", reason="sync answered 503"):
    store.create(request_id, vendor, PAYLOAD)
    store.claim(request_id, f"message-{request_id}")
    assert store.fail(request_id, f"message-{request_id}", reason)


def test_the_overview_counts_jobs_per_state_and_the_chart_counts_this_minute(parts, keeping_store):
    *_, queries, _ = parts
    keeping_store.create("a", "sync", PAYLOAD)
    keeping_store.create("b", "sync", PAYLOAD)
    failed_job(keeping_store, "c")
    states = queries.overview()["states"]
    assert states["queued"] == 2 and states["failed"] == 1 and states["complete"] == 0
    chart = queries.throughput()
    assert len(chart["minutes"]) == 60
    # The last two minutes: the test may straddle a minute's end.
    assert sum(chart["submitted"][-2:]) == 3 and sum(chart["failed"][-2:]) == 1 and sum(chart["completed"]) == 0
    assert chart["totals"] == {"submitted": 3, "completed": 0, "failed": 1}


def test_a_vendor_row_shows_its_window_backlog_breaker_and_last_error(parts, keeping_store):
    registry, _, limiter, queries, _ = parts
    sync = registry.get("sync")
    for n in range(12):  # 10 start in this window, 2 wait for their time
        limiter.acquire(sync, f"job-{n}").wait_ms
    CircuitBreaker(limiter.client).failed(sync)
    CircuitBreaker(limiter.client).failed(sync)
    failed_job(keeping_store, "x", reason="sync answered 503")
    row = next(vendor for vendor in queries.overview()["vendors"] if vendor["name"] == "sync")
    assert (row["started"], row["limit"], row["quota_pct"]) == (10, 10, 100)
    assert row["backlog"] == 2 and row["wait_s"] > 50
    assert row["breaker"] == "open" and row["breaker_failures"] == 2
    assert row["last_error"] == "sync answered 503"


def test_failures_are_filtered_by_vendor_and_reason_and_paged(parts, keeping_store):
    *_, queries, _ = parts
    for n in range(27):
        failed_job(keeping_store, f"s{n:02}", reason=f"sync answered {503 if n % 3 else 400}")
    failed_job(keeping_store, "o1", vendor="other", reason="other answered 503")
    assert queries.failures(None, None, 1)["total"] == 28
    page = queries.failures("sync", "ANSWERED 503", 2)
    assert page["total"] == 18 and page["pages"] == 1 and page["page"] == 1  # clamped to the last page
    assert {job["vendor"] for job in page["jobs"]} == {"sync"}
    assert all(job["retryable"] for job in page["jobs"])
    assert len(queries.failures(None, None, 2)["jobs"]) == 3
    assert "hunter2" not in orjson.dumps(queries.failures(None, None, 1)).decode()


def test_a_job_view_shows_history_and_result_but_never_the_payload(parts, keeping_store):
    *_, queries, _ = parts
    keeping_store.create("j", "sync", PAYLOAD)
    keeping_store.claim("j", "m")
    keeping_store.complete("j", {"account": "xyz"}, ["email"], detail="sync answered 200")
    view = queries.job("j")
    assert view["status"] == "complete" and view["removed_keys"] == "email" and '"account": "xyz"' in view["result"]
    assert [entry["what"] for entry in view["history"]] == ["queued", "processing", "complete"]
    assert view["took_s"] is not None and not view["retryable"]
    assert "hunter2" not in orjson.dumps(view).decode() and "payload" not in view
    assert queries.job("missing") is None


@pytest.fixture
def receiver():
    receiver = CallbackReceiver()
    yield receiver
    receiver.close()


def fail_job_with_callback(store, url):
    store.create("cb", "sync", PAYLOAD, callback_url=url)
    store.claim("cb", "m1")
    store.fail("cb", "m1", "sync answered 503")


def complete_retried_job(store):
    store.claim("cb", "m2")
    store.complete("cb", {"account": "xyz"}, [], detail="sync answered 200")


def callbacks_received(receiver):
    return [(headers["webhook-id"], orjson.loads(body)["status"]) for headers, body in receiver.calls]


def test_a_retried_jobs_client_hears_of_its_new_outcome_under_a_webhook_id_of_its_own(keeping_store, receiver):
    fail_job_with_callback(keeping_store, receiver.url)
    send = partial(deliver, keeping_store, LOOPBACK_ALLOWED, ClientStore(keeping_store.collection.database, keeping_store.cipher), CALLBACK_SECRET, "cb")
    send()
    assert keeping_store.retry("cb", "retried by an operator")
    complete_retried_job(keeping_store)
    send()
    send()  # delivered already: nothing more
    assert callbacks_received(receiver) == [("msg_cb", "failed"), ("msg_cb_1", "complete")]


def test_a_callback_queued_just_before_a_retry_tells_the_client_only_of_the_new_outcome(keeping_store, receiver):
    fail_job_with_callback(keeping_store, receiver.url)
    assert keeping_store.retry("cb", "retried by an operator")
    keeping_store.mark_callback_queued("cb")  # the callback sweep, acting on what it read before the retry
    assert keeping_store.collection.find_one({"_id": "cb"})["callback_pending"]
    send = partial(deliver, keeping_store, LOOPBACK_ALLOWED, ClientStore(keeping_store.collection.database, keeping_store.cipher), CALLBACK_SECRET, "cb")
    send()  # the callback that sweep queued: nothing final to tell
    complete_retried_job(keeping_store)
    send()
    assert callbacks_received(receiver) == [("msg_cb_1", "complete")]


def test_retrying_a_failed_job_queues_it_again_with_a_fresh_budget_and_records_it(parts, keeping_store, redis_client):
    _, broker, _, queries, actions = parts
    failed_job(keeping_store, "r")
    assert queries.job("r")["retryable"]
    assert actions.retry("r", "session from 127.0.0.1")
    job = keeping_store.get("r")
    assert job["status"] == "queued" and job["attempts"] == 0 and job["error"] is None and job["expires_at"] is None
    assert job["history"][-1]["detail"] == "retried by an operator (session from 127.0.0.1)"
    assert "r" in request_ids_in_queue(broker)
    assert keeping_store.claim("r", "new-message")["payload"] == PAYLOAD
    assert not actions.retry("r", "session from 127.0.0.1")  # processing now: nothing to retry


def test_a_job_whose_payload_was_erased_cannot_be_retried(parts, store):
    *_, actions = parts
    failed_job(store, "erased")  # the default store erases the payload at failure
    assert "payload" not in store.collection.find_one({"_id": "erased"})
    on_default_store = OperatorActions(store, actions.broker, actions.enqueue)
    assert not on_default_store.retry("erased", "bearer from 127.0.0.1")
    assert store.get("erased")["status"] == "failed"


def test_retry_all_retries_only_the_jobs_matching_the_filter(parts, keeping_store):
    *_, actions = parts
    failed_job(keeping_store, "a1", reason="sync answered 503")
    failed_job(keeping_store, "a2", reason="sync rejected the request with 400")
    failed_job(keeping_store, "b1", vendor="other", reason="other answered 503")
    assert actions.retry_matching("sync", "503", "bearer from 127.0.0.1") == 1
    assert [keeping_store.get(i)["status"] for i in ("a1", "a2", "b1")] == ["queued", "failed", "failed"]


def test_purging_dead_letters_notes_it_in_each_job_and_keeps_letters_that_came_later(parts, keeping_store, redis_client):
    _, broker, _, queries, actions = parts
    failed_job(keeping_store, "d")
    message = dramatiq.Message(queue_name=QUEUE_NAME, actor_name=FETCH_ACTOR, args=("d",), kwargs={}, options={})
    redis_client.xadd(dead_key(QUEUE_NAME), {"message": message.encode(), "reason": "delivered 5 times", "dead_at_ms": 1})
    assert queries.dead_letters()["entries"][0]["request_id"] == "d"
    assert actions.purge_dead_letters("session from 127.0.0.1") == 1
    assert keeping_store.get("d")["history"][-1]["event"].startswith("dead letter ")
    assert list_dead_letters(redis_client, QUEUE_NAME) == []


def test_the_scheduler_view_shows_the_lease_holder_and_each_sweeps_last_run(parts, redis_client):
    *_, queries, _ = parts
    lease = LeaderLease(redis_client, 5.0, identity="clock-a")
    assert lease.try_lead()
    run_if_leader(lease, redis_client, "orphans", lambda: {"queued": 2})
    view = queries.scheduler()
    assert view["leader"] == "clock-a" and view["leader_since"] and 0 < view["lease_left_s"] <= 5
    assert view["sweeps"][0]["name"] == "orphans" and view["sweeps"][0]["changes"] == "queued 2"


def test_completing_a_retried_job_erases_its_payload(keeping_store):
    failed_job(keeping_store, "k")
    assert "payload" in keeping_store.collection.find_one({"_id": "k"})
    assert keeping_store.retry("k", "retried")
    keeping_store.claim("k", "m2")
    keeping_store.complete("k", {}, [], detail="done")
    assert "payload" not in keeping_store.collection.find_one({"_id": "k"})


def test_only_failed_and_timed_out_jobs_may_be_retried(keeping_store):
    keeping_store.create("q", "sync", PAYLOAD)
    assert not keeping_store.retry("q", "retried")
    keeping_store.collection.update_one({"_id": "q"}, {"$set": {"status": JobStatus.TIMED_OUT.value}})
    assert keeping_store.retry("q", "retried")


def test_a_given_up_client_callback_is_listed_and_an_operator_can_re_send_it_once(parts, keeping_store, redis_client):
    *_, queries, actions = parts
    keeping_store.create("gone", "sync", PAYLOAD, callback_url="http://127.0.0.1:9/hook")
    keeping_store.claim("gone", "m1")
    keeping_store.fail("gone", "m1", "sync answered 503")
    assert keeping_store.callback_attempted(keeping_store.get("gone"), 8, "client callback answered 500; gave up after 8 attempts")
    callbacks = queries.failures(None, None, 1)["callbacks"]
    assert callbacks["total"] == 1
    assert [(c["request_id"], c["attempts"], c["reason"]) for c in callbacks["entries"]] == [
        ("gone", 8, "client callback answered 500; gave up after 8 attempts"),
    ]
    assert actions.resend_callback("gone", "session from 127.0.0.1")
    job = keeping_store.collection.find_one({"_id": "gone"})
    assert job["callback_attempts"] == 0 and job["history"][-1]["event"] == "client callback re-sent by an operator (session from 127.0.0.1)"
    [(_, fields)] = redis_client.xrange(CALLBACK_QUEUE)
    assert dramatiq.Message.decode(fields[b"message"]).args == ("gone",)
    assert queries.failures(None, None, 1)["callbacks"]["total"] == 0
    assert not actions.resend_callback("gone", "session from 127.0.0.1")  # due again, not given up
