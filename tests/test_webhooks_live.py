"""Webhooks against the real processes: gunicorn API, worker, clock and signing mock vendors."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import redis
import requests

from devtools.stack import Stack, free_ports, wait_until
from queueing.messages import QUEUE_NAME
from service.config import Config
from service.states import JobStatus
from service.store import open_store, utcnow
from tests.conftest import with_database
from tests.signing import new_secret, signed_headers

FAST_SECRET, SILENT_SECRET, OTHER_SECRET = new_secret("fast"), new_secret("silent"), new_secret("other")
REGISTRY = """
[vendors.eager]
mode = "async"
url = "http://127.0.0.1:{eager_port}/fetch"
rate_limit = "6000/minute"
webhook_secret = "{fast_secret}"

[vendors.fast]
mode = "async"
url = "http://127.0.0.1:{fast_port}/fetch"
rate_limit = "6000/minute"
webhook_secret = "{fast_secret}"

[vendors.silent]
mode = "async"
url = "http://127.0.0.1:{silent_port}/fetch"
rate_limit = "6000/minute"
webhook_secret = "{silent_secret}"
webhook_timeout_s = 1
webhook_retries = 1

[vendors.other]
mode = "async"
url = "http://127.0.0.1:{fast_port}/fetch"
webhook_secret = "{other_secret}"
"""
TERMINAL = ("complete", "failed", "timed_out")


class EagerVendor:
    """An async vendor that delivers its signed webhook before it answers the fetch itself."""

    def __init__(self, port: int, secret: str) -> None:
        self.webhook_answers: list[int] = []
        record = self.webhook_answers

        class Fetch(BaseHTTPRequestHandler):
            def do_POST(self):
                job = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                raw = orjson.dumps({"request_id": job["request_id"], "account": "early"})
                answer = requests.post(job["callback_url"], data=raw, headers=signed_headers(secret, raw), timeout=10)
                record.append(answer.status_code)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Fetch)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client):
    from cryptography.fernet import Fernet

    folder = tmp_path_factory.mktemp("webhooks-live")
    api_port, fast_port, silent_port, eager_port = free_ports(4)
    registry = folder / "vendors.toml"
    registry.write_text(REGISTRY.format(
        fast_port=fast_port, silent_port=silent_port, eager_port=eager_port,
        fast_secret=FAST_SECRET, silent_secret=SILENT_SECRET, other_secret=OTHER_SECRET,
    ))
    database = f"webhooks_live_{uuid.uuid4().hex[:8]}"
    env = {
        "REDIS_URL": redis_url,
        "MONGODB_URI": with_database(mongodb_uri, database),
        "VENDORS_FILE": str(registry),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "AUTH": "open",
        "SWEEP_INTERVAL_S": "0.2",
        "CLOCK_LEASE_S": "2",
        "ORPHAN_AFTER_S": "1",
    }
    stack = Stack(env, folder)
    stack.redis = redis.Redis.from_url(redis_url)
    stack.redis.flushdb()
    stack.eager_vendor = EagerVendor(eager_port, FAST_SECRET)
    try:
        # A fast vendor calls back at once, often before the worker has recorded awaiting_webhook.
        stack.start_mock("async", fast_port, "--callback-delay-s", "0", "--secret", FAST_SECRET, name="vendor-fast")
        # A silent vendor accepts jobs and never calls back within a test.
        stack.start_mock("async", silent_port, "--callback-delay-s", "3600", "--secret", SILENT_SECRET, name="vendor-silent")
        stack.start_api(api_port)
        stack.start_worker(threads=8)
        stack.start_clock()
        stack.url = f"http://127.0.0.1:{api_port}"
        stack.silent_url = f"http://127.0.0.1:{silent_port}"
        stack.store = open_store(Config(encryption_key=env["ENCRYPTION_KEY"], mongodb_uri=env["MONGODB_URI"]))
        yield stack
    finally:
        stack.stop()
        stack.eager_vendor.close()
        stack.redis.close()
        mongo_client.drop_database(database)


def submit(stack, vendor):
    response = requests.post(f"{stack.url}/jobs", params={"vendor": vendor}, json={"name": "Ann", "password": "pw"}, timeout=5)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def finished(stack, request_id, timeout_s=20):
    def done():
        job = stack.store.collection.find_one({"_id": request_id})
        return job if job["status"] in TERMINAL else None
    return wait_until(done, timeout_s, f"job {request_id} to finish", interval_s=0.05)


def states(job):
    return [entry["state"] for entry in job["history"] if "state" in entry]


def awaiting_job(stack, vendor="fast"):
    """Store a job the worker has already sent to `vendor`."""
    request_id = str(uuid.uuid4())
    stack.store.create(request_id, vendor, {"name": "Ann"})
    stack.store.collection.update_one({"_id": request_id}, {"$set": {
        "status": JobStatus.AWAITING_WEBHOOK.value, "webhook_deadline": utcnow() + timedelta(minutes=5),
    }})
    return request_id


def post_webhook(stack, vendor, body, secret=None, msg_id=None, at=None, raw=None):
    raw = raw if raw is not None else orjson.dumps(body)
    headers = signed_headers(secret, raw, msg_id, at) if secret else {"Content-Type": "application/json"}
    return requests.post(f"{stack.url}/vendor-webhook/{vendor}", data=raw, headers=headers, timeout=10)


def test_signed_callbacks_of_a_fast_vendor_complete_every_job_once_whichever_comes_first(stack):
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda _: submit(stack, "fast"), range(40)))
    jobs = [finished(stack, request_id) for request_id in ids]
    assert {job["status"] for job in jobs} == {"complete"}
    # The mock sends the name and the email back: the deny-list drops the email, the rest stays.
    assert all(job["result"]["account"] == "xyz" and "email" not in job["result"] and "name" in job["result"] for job in jobs)
    for job in jobs:
        # The webhook may land before or after the worker records awaiting_webhook; either way
        # the job completes once and nothing moves it afterwards.
        assert states(job)[-1] == "complete" and states(job).count("complete") == 1
        assert states(job) in (["queued", "processing", "complete"], ["queued", "processing", "awaiting_webhook", "complete"])


def test_a_webhook_that_beats_the_worker_completes_the_job_and_the_worker_then_does_nothing(stack):
    request_id = submit(stack, "eager")
    job = finished(stack, request_id)
    assert stack.eager_vendor.webhook_answers == [200]
    assert job["result"] == {"account": "early"}
    # Once the worker has acknowledged its message, the job must not have moved again.
    wait_until(lambda: stack.redis.xlen(QUEUE_NAME) == 0, 10, "the worker to acknowledge its message")
    stored = stack.store.collection.find_one({"_id": request_id})
    assert states(stored) == ["queued", "processing", "complete"]
    assert stored["attempts"] == 1  # the worker counts its call though the webhook recorded the outcome first


@pytest.mark.parametrize("round_", range(10))
def test_duplicate_webhooks_racing_each_other_apply_exactly_one_result(stack, round_):
    request_id = awaiting_job(stack)
    bodies = [{"request_id": request_id, "account": f"copy-{n}"} for n in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda body: post_webhook(stack, "fast", body, FAST_SECRET), bodies))
    assert [(r.status_code, r.json()) for r in responses] == [(200, {"message": "Result saved"})] * 8
    job = stack.store.collection.find_one({"_id": request_id})
    assert job["result"] in [{"account": f"copy-{n}"} for n in range(8)]
    assert states(job).count("complete") == 1


@pytest.mark.parametrize("round_", range(5))
def test_the_same_delivery_racing_itself_takes_effect_once_and_is_then_refused_as_a_replay(stack, round_):
    request_id = awaiting_job(stack)
    raw = orjson.dumps({"request_id": request_id, "account": "xyz"})
    headers = signed_headers(FAST_SECRET, raw)
    send = lambda _: requests.post(f"{stack.url}/vendor-webhook/fast", data=raw, headers=headers, timeout=10)  # noqa: E731
    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = [response.status_code for response in pool.map(send, range(6))]
    assert 200 in codes and set(codes) <= {200, 409}
    assert send(None).status_code == 409
    assert states(stack.store.collection.find_one({"_id": request_id})).count("complete") == 1


def tampered(stack, request_id):
    headers = signed_headers(FAST_SECRET, orjson.dumps({"request_id": request_id, "account": "xyz"}))
    return requests.post(f"{stack.url}/vendor-webhook/fast", headers=headers, timeout=5,
                         data=orjson.dumps({"request_id": request_id, "account": "stolen"}))


def replayed(stack, request_id):
    raw = orjson.dumps({"request_id": request_id, "account": "xyz"})
    headers = signed_headers(FAST_SECRET, raw)
    assert requests.post(f"{stack.url}/vendor-webhook/fast", data=raw, headers=headers, timeout=5).status_code == 200
    return requests.post(f"{stack.url}/vendor-webhook/fast", data=raw, headers=headers, timeout=5)


@pytest.mark.parametrize("call, status, words, outcome", [
    pytest.param(lambda s, i: post_webhook(s, "fast", {"request_id": i, "account": "xyz"}, FAST_SECRET),
                 200, "Result saved", "complete", id="signed"),
    pytest.param(lambda s, i: post_webhook(s, "fast", {"request_id": i, "account": "xyz"}),
                 401, "Missing required headers", "awaiting_webhook", id="unsigned"),
    pytest.param(tampered, 401, "No matching signature", "awaiting_webhook", id="tampered"),
    pytest.param(lambda s, i: post_webhook(s, "fast", {"request_id": i}, FAST_SECRET, at=datetime.now(timezone.utc) - timedelta(minutes=6)),
                 401, "too old", "awaiting_webhook", id="stale"),
    pytest.param(lambda s, i: post_webhook(s, "fast", {"request_id": i}, OTHER_SECRET),
                 401, "No matching signature", "awaiting_webhook", id="signed-with-another-vendors-secret"),
    pytest.param(replayed, 409, "replay refused", "complete", id="replayed"),
    pytest.param(lambda s, i: post_webhook(s, "other", {"request_id": i, "account": "xyz"}, OTHER_SECRET),
                 403, "not sent to vendor 'other'", "awaiting_webhook", id="wrong-vendor"),
    pytest.param(lambda s, i: post_webhook(s, "fast", {"request_id": str(uuid.uuid4())}, FAST_SECRET),
                 404, "no job has request_id", "awaiting_webhook", id="unknown-job"),
    pytest.param(lambda s, i: post_webhook(s, "acme", {"request_id": i}, FAST_SECRET),
                 404, "no vendor is called 'acme'", "awaiting_webhook", id="unknown-vendor"),
])
def test_webhooks_over_http_get_the_documented_answer(stack, call, status, words, outcome):
    request_id = awaiting_job(stack)
    response = call(stack, request_id)
    assert response.status_code == status
    assert words in response.text
    assert stack.store.get(request_id)["status"] == outcome


def test_a_webhook_from_the_wrong_vendor_is_recorded_in_the_jobs_history(stack):
    request_id = awaiting_job(stack)
    post_webhook(stack, "other", {"request_id": request_id, "account": "xyz"}, OTHER_SECRET)
    assert stack.store.get(request_id)["history"][-1]["event"] == "webhook refused: sent by 'other', job belongs to 'fast'"


def test_an_async_job_whose_callback_never_comes_is_asked_again_then_times_out_and_late_data_is_kept(stack):
    request_id = submit(stack, "silent")
    job = finished(stack, request_id, timeout_s=15)
    assert job["status"] == "timed_out" and job["error"].endswith("after 2 requests")
    assert states(job) == ["queued", "processing", "awaiting_webhook", "queued", "processing", "awaiting_webhook", "timed_out"]
    assert "payload" not in job and job["expires_at"] > job["updated_at"]
    assert requests.get(f"{stack.url}/jobs/{request_id}", timeout=5).json()["error"] == job["error"]

    late = post_webhook(stack, "silent", {"request_id": request_id, "account": "late", "ssn": "1"}, SILENT_SECRET)
    assert late.status_code == 409 and "timed_out" in late.json()["description"]
    job = stack.store.collection.find_one({"_id": request_id})
    assert job["status"] == "timed_out" and job["late_result"] == {"account": "late"}
    assert job["history"][-1]["event"] == "late webhook from silent refused while timed_out"


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.QUEUED])
def test_an_orphaned_job_whose_message_is_gone_is_picked_up_by_the_clock(stack, status):
    request_id = str(uuid.uuid4())
    stack.store.create(request_id, "fast", {"name": "Ann"})  # stored, never enqueued
    stack.store.collection.update_one({"_id": request_id}, {"$set": {"status": status.value}})
    job = finished(stack, request_id, timeout_s=15)
    assert job["status"] == "complete"
    assert any("orphan sweep" in (entry.get("detail") or entry.get("event", "")) for entry in job["history"])
