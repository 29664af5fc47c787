"""The real processes together: gunicorn API, dramatiq worker, both mock vendors."""

import uuid
from datetime import timedelta

import pytest
import requests
import standardwebhooks

from devtools.stack import CallbackReceiver, Stack, free_ports, vendors_toml, wait_until
from queueing.connection import build_broker, connect_redis
from queueing.messages import CALLBACK_QUEUE
from scheduler.sweeps import queue_missed_callbacks
from service.store import JobStore, payload_cipher, utcnow
from tests.conftest import with_database
from tests.hostile_endpoints import HostileEndpoint, flood, trickle
from tests.signing import new_secret

CALLBACK_SECRET = new_secret("client callbacks")
E2E_DATABASE = "e2e_jobs"
DOWN_VENDOR = """
[vendors.down]
mode = "sync"
url = "http://127.0.0.1:{port}/fetch"
rate_limit = "6000/minute"  # a third of 100 jobs, each tried twice, must not wait for the window
timeout_s = 1
max_retries = 1
breaker_failures = 0  # these tests count retries; the circuit breaker has tests of its own
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client):
    from cryptography.fernet import Fernet

    folder = tmp_path_factory.mktemp("e2e")
    api_port, sync_port, async_port, closed_port = free_ports(4)
    registry = folder / "vendors.toml"
    registry.write_text(vendors_toml(sync_port, async_port) + DOWN_VENDOR.format(port=closed_port))
    database = E2E_DATABASE
    stack = Stack({
        "REDIS_URL": redis_url,
        "MONGODB_URI": with_database(mongodb_uri, database),
        "VENDORS_FILE": str(registry),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "AUTH": "open",
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "CALLBACK_ALLOW_NETWORKS": "127.0.0.1/32",
    }, folder)
    try:
        stack.start_mock("sync", sync_port)
        stack.start_mock("async", async_port, "--callback-delay-s", "0.2")
        stack.start_api(api_port)
        stack.start_worker(threads=8, queues=("job-queue",))  # as the Procfile runs them
        stack.start_worker("callbacks", threads=4, queues=("client-callbacks",))
        stack.url = f"http://127.0.0.1:{api_port}"
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database(database)


def submit(stack, vendor=None, body=None, **params):
    if vendor:
        params["vendor"] = vendor
    response = requests.post(f"{stack.url}/jobs", json=body or {"name": "TestUser", "email": "test@mail.com", "password": "pass"}, params=params, timeout=5)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def final_state(stack, request_id, timeout_s=30):
    def finished():
        job = requests.get(f"{stack.url}/jobs/{request_id}", timeout=5).json()
        return job if job["status"] in ("complete", "failed", "timed_out") else None
    return wait_until(finished, timeout_s, f"job {request_id} to finish", interval_s=0.1)


def test_sync_job_completes_with_a_cleaned_result(stack):
    job = final_state(stack, submit(stack, "sync", {"name": "  Ann  ", "password": "pw"}))
    assert job["status"] == "complete"
    assert job["result"]["account"] == "xyz" and job["result"]["balance"] == 5000
    assert not {"email", "phone", "pii", "ssn", "request_id"} & set(job["result"])
    assert all(value == value.strip() for value in job["result"].values() if isinstance(value, str))
    assert "pw" not in str(job)


def test_async_job_completes_through_the_token_callback(stack):
    job = final_state(stack, submit(stack, "async"))
    assert job["status"] == "complete" and job["vendor"] == "async"
    assert job["result"]["account"] == "xyz"


def test_a_webhook_without_the_job_token_is_refused(stack):
    request_id = submit(stack, "async")
    response = requests.post(f"{stack.url}/vendor-webhook/async", json={"request_id": request_id, "account": "forged"}, timeout=5)
    assert response.status_code == 401
    assert final_state(stack, request_id)["result"]["account"] == "xyz"


def test_a_hundred_round_robin_jobs_all_finish_and_every_working_vendor_completes_them(stack):
    ids = [submit(stack) for _ in range(100)]
    jobs = [final_state(stack, request_id, timeout_s=60) for request_id in ids]
    outcomes = {(job["vendor"], job["status"]) for job in jobs}
    assert outcomes == {("sync", "complete"), ("async", "complete"), ("down", "failed")}


def test_an_unreachable_vendor_is_retried_then_the_job_fails_with_the_reason(stack):
    job = final_state(stack, submit(stack, "down"), timeout_s=30)
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert job["error"].startswith("gave up after 2 attempts: down could not be reached")


@pytest.fixture
def receiver():
    receiver = CallbackReceiver((503,))  # the first delivery fails: the callback must be retried
    yield receiver
    receiver.close()


@pytest.mark.parametrize("vendor, status", [("sync", "complete"), ("async", "complete"), ("down", "failed")])
def test_the_client_callback_brings_the_final_state_once_signed(stack, receiver, mongo_client, vendor, status):
    request_id = submit(stack, vendor, callback_url=receiver.url)
    job = final_state(stack, request_id)
    wait_until(lambda: len(receiver.calls) >= 2, 30, "the retried client callback")
    headers, body = receiver.calls[-1]
    delivered = standardwebhooks.Webhook(CALLBACK_SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    assert delivered == {"request_id": request_id, "status": status, "result": job["result"], "error": job.get("error")}
    assert len(receiver.calls) == 2
    assert len({call_headers["webhook-id"] for call_headers, _ in receiver.calls}) == 1
    stored = wait_until(lambda: mongo_client[E2E_DATABASE].jobs.find_one({"_id": request_id, "callback_delivered_at": {"$exists": True}}), 5, "the delivery to be recorded")
    assert "callback_url" not in requests.get(f"{stack.url}/jobs/{request_id}", timeout=5).json() and stored["callback_url"] == receiver.url
    attempts = [entry["event"] for entry in stored["history"] if "client callback" in entry.get("event", "")]
    assert attempts[0].startswith("client callback answered 503 (attempt 1); next in") and attempts[1] == "client callback delivered"
    assert stored["callback_attempts"] == 2 and "callback_pending" not in stored


def test_metrics_sum_the_workers_vendor_calls_with_the_apis_counts(stack):
    from prometheus_client.parser import text_string_to_metric_families

    final_state(stack, submit(stack, "sync"))
    final_state(stack, submit(stack, "down"))
    text = requests.get(f"{stack.url}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("vendorfetch_vendor_requests_total", (("outcome", "ok"), ("vendor", "sync")))] >= 1
    assert samples[("vendorfetch_vendor_requests_total", (("outcome", "unavailable"), ("vendor", "down")))] >= 2
    assert samples[("vendorfetch_jobs_finished_total", (("status", "failed"), ("vendor", "down")))] >= 1
    assert samples[("vendorfetch_jobs_submitted_total", (("vendor", "sync"),))] >= 1


def test_each_event_is_one_json_line_naming_the_job_its_vendor_and_timing_never_the_payload(stack):
    password = f"pw-{uuid.uuid4().hex}"
    sync_id, async_id = (submit(stack, vendor, {"name": "Ann", "password": password}) for vendor in ("sync", "async"))
    assert final_state(stack, sync_id)["status"] == "complete" and final_state(stack, async_id)["status"] == "complete"
    api, worker = stack.process("api"), stack.process("worker")

    def finished(process, request_id):
        return next((e for e in process.logged_events(request_id) if e.get("state") == "complete"), None)

    # The worker completes the sync job; the async one is completed by its webhook, in the API.
    for process, request_id, vendor in ((worker, sync_id, "sync"), (api, async_id, "async")):
        event = wait_until(lambda: finished(process, request_id), 5, f"the {vendor} job's completion to be logged")
        assert event["vendor"] == vendor and event["duration_ms"] >= 0 and event["level"] == "INFO"
    for request_id, vendor, outcome in ((sync_id, "sync", "ok"), (async_id, "async", "accepted")):
        call = wait_until(lambda: next((e for e in worker.logged_events(request_id) if "outcome" in e), None), 5, "the call to be logged")
        assert (call["vendor"], call["outcome"]) == (vendor, outcome) and call["duration_ms"] > 0
        events = worker.logged_events(request_id)
        assert {e["state"] for e in events if "state" in e} >= {"processing"}
        assert all(e["vendor"] == vendor for e in events)
    for request_id, vendor in ((sync_id, "sync"), (async_id, "async")):
        [queued] = [e for e in api.logged_events(request_id) if e.get("state") == "queued"]
        assert queued["vendor"] == vendor and queued["starts_in_ms"] >= 0
    assert password not in api.log() + worker.log()


def test_trickling_and_flooding_callback_endpoints_never_hold_back_a_fetch(stack):
    trickling, flooding = HostileEndpoint(trickle), HostileEndpoint(flood)
    try:
        for _ in range(25):
            for endpoint in (trickling, flooding):
                submit(stack, "sync", callback_url=endpoint.url)
        # Every callback thread soon waits on a trickling endpoint, for its whole deadline.
        wait_until(lambda: trickling.connections >= 4 and flooding.connections, 20, "the callbacks to reach both endpoints")
        plain = [submit(stack, "sync") for _ in range(50)]
        # Seconds, where fetches sharing threads with fifty ten-second callbacks would wait minutes.
        assert {final_state(stack, request_id, timeout_s=20)["status"] for request_id in plain} == {"complete"}
        assert trickling.connections < 50  # the callbacks were still being tried meanwhile
    finally:
        trickling.close()
        flooding.close()
    # Each delivery read a capped answer and hung up: what it was sent is what socket buffers hold.
    assert flooding.sent_bytes < flooding.connections * 32 * 1024 * 1024


def test_a_callback_whose_message_redis_lost_still_arrives_after_the_sweep(stack, receiver, mongo_client, redis_url, mongodb_uri):
    from cryptography.fernet import Fernet

    request_id = submit(stack, "sync", callback_url=receiver.url)
    wait_until(lambda: len(receiver.calls) == 1, 10, "the first delivery, which fails")
    jobs = mongo_client[E2E_DATABASE].jobs
    wait_until(lambda: jobs.find_one({"_id": request_id, "callback_attempts": 1}), 5, "the failed attempt to be recorded")
    broker = build_broker(connect_redis(redis_url))
    try:
        broker.flush(CALLBACK_QUEUE)  # Redis lost the retry waiting in the delay set
        jobs.update_one({"_id": request_id}, {"$set": {"callback_due_at": utcnow() - timedelta(hours=1)}})  # and time passed
        store = JobStore(jobs, payload_cipher(Fernet.generate_key().decode()))
        assert queue_missed_callbacks(store, broker, timedelta(minutes=1)) == {"queued": 1}
    finally:
        broker.close()
    wait_until(lambda: len(receiver.calls) == 2, 10, "the callback the sweep queued again")
    assert wait_until(lambda: jobs.find_one({"_id": request_id, "callback_delivered_at": {"$exists": True}}), 5, "the delivery")
