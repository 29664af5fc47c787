"""The real worker (`dramatiq actors.worker`) killed with SIGKILL at the dangerous points, and what becomes of each job.

A sync vendor may be called again after a crash (the design allows a redelivery to repeat a
call whose outcome was never recorded); an async vendor whose acceptance was recorded is never
called twice; a message that keeps killing its worker ends in the dead-letter stream and fails
its job. The broker's visibility timeout is short here, so a redelivery takes seconds.
"""

import os
import signal
import threading

import pytest
import redis
import requests

from devtools.stack import Stack, free_ports, service_env, wait_until
from queueing.connection import build_broker
from queueing.keys import dead_key, delay_key
from queueing.messages import QUEUE_NAME, enqueue_fetch
from queueing.ratelimit import vendor_key
from tests.conftest import with_database
from tests.scripted_vendor import scripted_vendors

DATABASE = "worker_crashes"
VISIBILITY_TIMEOUT_MS = 2_000
REGISTRY = """
[vendors.held]
mode = "sync"
url = "{held}"
rate_limit = "6000/minute"
breaker_failures = 0

[vendors.pushy]
mode = "sync"
url = "{pushy}"
rate_limit = "6000/minute"

[vendors.accepting]
mode = "async"
url = "{accepting}"
rate_limit = "6000/minute"
webhook_timeout_s = 300

[vendors.deadly]
mode = "sync"
url = "{deadly}"
rate_limit = "6000/minute"
breaker_failures = 0
"""


@pytest.fixture(scope="module")
def vendors():
    with scripted_vendors("held", "pushy", "accepting", "deadly") as scripted:
        yield scripted


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client, vendors):
    redis.Redis.from_url(redis_url).flushdb()
    folder = tmp_path_factory.mktemp("crashes")
    api_port, = free_ports(1)
    registry = folder / "vendors.toml"
    registry.write_text(REGISTRY.format(**{name: vendor.url for name, vendor in vendors.items()}))
    env = service_env(redis_url, with_database(mongodb_uri, DATABASE), registry, api_port)
    stack = Stack({**env, "VISIBILITY_TIMEOUT_MS": str(VISIBILITY_TIMEOUT_MS)}, folder)
    try:
        stack.start_api(api_port)
        stack.url = f"http://127.0.0.1:{api_port}"
        stack.redis = redis.Redis.from_url(redis_url)
        stack.jobs = mongo_client[DATABASE].jobs
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database(DATABASE)


@pytest.fixture
def worker(stack):
    """Start a worker for one test; the test may kill it and start another."""
    yield lambda: stack.start_worker(processes=1, threads=2)
    stack.stop("worker")


def submit(stack, vendor):
    response = requests.post(f"{stack.url}/jobs", json={"name": "Ann"}, params={"vendor": vendor}, timeout=5)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def final(stack, request_id, timeout_s=30):
    def done():
        job = stack.jobs.find_one({"_id": request_id})
        return job if job and job["status"] in ("complete", "failed", "timed_out") else None
    return wait_until(done, timeout_s, f"job {request_id} to finish", interval_s=0.05)


def test_a_worker_killed_while_its_call_is_out_is_replaced_and_the_job_completes_once(stack, vendors, worker):
    held, release = vendors["held"], threading.Event()

    def hold_the_first_call(request_id):
        if len(held.calls_for(request_id)) == 1:
            release.wait(30)
        return 200, {}

    held.answer = hold_the_first_call
    first = worker()
    request_id = submit(stack, "held")
    wait_until(lambda: held.calls, 10, "the vendor to be called")
    assert stack.jobs.find_one({"_id": request_id})["status"] == "processing"
    first.kill()  # after the claim, before any answer
    release.set()
    worker()
    job = final(stack, request_id)
    assert job["status"] == "complete" and job["attempts"] == 1
    # The first call's outcome was never recorded: the redelivery calls again, once.
    assert len(held.calls_for(request_id)) == 2
    assert [entry.get("state") for entry in job["history"]].count("complete") == 1


def test_a_worker_killed_after_the_vendor_answered_but_before_the_completion_was_written_calls_again_once(stack, vendors, worker):
    held, called, answer = vendors["held"], threading.Event(), threading.Event()

    def answer_when_the_worker_is_frozen(request_id):
        if len(held.calls_for(request_id)) == 1:
            called.set()
            answer.wait(30)
        return 200, {}

    held.answer = answer_when_the_worker_is_frozen
    first = worker()
    request_id = submit(stack, "held")
    assert called.wait(10)
    os.killpg(first.process.pid, signal.SIGSTOP)  # frozen: it cannot read the answer, let alone record it
    try:
        answer.set()
        wait_until(lambda: request_id in held.answered, 5, "the answer to be sent")
    finally:
        first.kill()
    assert stack.jobs.find_one({"_id": request_id})["status"] == "processing"
    worker()
    job = final(stack, request_id)
    assert job["status"] == "complete" and job["attempts"] == 1
    assert len(held.calls_for(request_id)) == 2


def test_a_fetch_message_for_a_job_awaiting_its_webhook_never_calls_the_async_vendor_again(stack, vendors, worker):
    accepting = vendors["accepting"]
    accepting.answer = lambda request_id: (202, {}, b"{}")
    worker()
    request_id = submit(stack, "accepting")
    wait_until(lambda: stack.jobs.find_one({"_id": request_id, "status": "awaiting_webhook"}), 10, "the acceptance to be recorded")
    # As a worker killed between recording the acceptance and its ack would leave it: a message for the job, delivered again.
    enqueue_fetch(build_broker(stack.redis), request_id, "the message that claimed it")
    wait_until(lambda: stack.redis.xlen(QUEUE_NAME) == 0, 10, "the redelivery to be handled")
    assert len(accepting.calls_for(request_id)) == 1
    assert stack.jobs.find_one({"_id": request_id})["status"] == "awaiting_webhook"


def test_a_worker_killed_while_a_429_defers_its_job_loses_neither_the_job_nor_the_pause(stack, vendors, worker):
    pushy = vendors["pushy"]
    pushy.answer = lambda request_id: (429, {"Retry-After": "5"}) if len(pushy.calls_for(request_id)) == 1 else (200, {})
    first = worker()
    request_id = submit(stack, "pushy")
    wait_until(lambda: stack.redis.hexists(vendor_key("pushy", "state"), "pause"), 10, "the 429's pause to be recorded")
    # The worker dies while the job waits out the pause: its message waits in Redis, acknowledged.
    wait_until(lambda: stack.redis.xlen(QUEUE_NAME) == 0 and stack.redis.zcard(delay_key(QUEUE_NAME)) == 1, 5, "the deferral")
    first.kill()
    worker()
    job = final(stack, request_id)
    assert job["status"] == "complete" and job["attempts"] == 1  # the 429 was no attempt
    calls = pushy.calls_for(request_id)
    assert len(calls) == 2 and calls[1] - calls[0] >= 5 - 0.05  # the second waited out the pause


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered_and_fails_its_job(stack, vendors, worker):
    deadly, workers = vendors["deadly"], []

    def kill_the_worker(request_id):
        os.killpg(workers[-1].process.pid, signal.SIGKILL)  # as if the job crashed the process
        return 200, {}

    deadly.answer = kill_the_worker
    request_id = submit(stack, "deadly")
    for delivery in range(1, 6):  # max_deliveries
        workers.append(worker())
        wait_until(lambda: len(deadly.calls_for(request_id)) >= delivery, 20, f"delivery {delivery}")
        workers[-1].process.wait(10)
    workers.append(worker())  # the next worker to look finds it delivered too often
    job = final(stack, request_id)
    assert job["status"] == "failed" and job["error"] == "the job could not be processed (its message was dead-lettered)"
    assert "delivered 5 times without ack" in job["history"][-1]["detail"]
    assert stack.redis.xlen(dead_key(QUEUE_NAME)) == 1
    assert len(deadly.calls_for(request_id)) == 5
