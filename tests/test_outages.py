"""Data-store outages: the real servers are stopped and restarted under a running service."""

import pytest
import redis
import requests
from cryptography.fernet import Fernet

from devtools import stores
from devtools.stack import Stack, free_ports, vendors_toml, wait_until

BODY = {"name": "TestUser", "email": "test@mail.com", "password": "pass"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Run the whole service on data stores of its own, which the tests may stop and restart."""
    folder = tmp_path_factory.mktemp("outages")
    redis_server = stores.valkey(folder / "valkey").start()
    mongo_server = stores.secantus(folder / "mongodb").start()
    api_port, sync_port, async_port = free_ports(3)
    registry = folder / "vendors.toml"
    registry.write_text(vendors_toml(sync_port, async_port))
    stack = Stack({
        "REDIS_URL": redis_server.url, "MONGODB_URI": mongo_server.url, "VENDORS_FILE": str(registry),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(), "PUBLIC_URL": f"http://127.0.0.1:{api_port}", "AUTH": "open",
        "STORE_TIMEOUT_MS": "500", "SWEEP_INTERVAL_S": "0.5", "ORPHAN_AFTER_S": "1", "CLOCK_LEASE_S": "3",
        "VISIBILITY_TIMEOUT_MS": "3000",  # messages a worker could not ack come back in seconds
    }, folder)
    try:
        # A slow sync vendor and a late async callback put work in flight when a store goes down.
        stack.start_mock("sync", sync_port, "--latency-ms", "1000")
        stack.start_mock("async", async_port, "--callback-delay-s", "1.5")
        stack.api = stack.start_api(api_port)
        stack.start_worker(threads=4)
        stack.start_clock()
        stack.url = f"http://127.0.0.1:{api_port}"
        stack.redis, stack.mongo = redis_server, mongo_server
        yield stack
    finally:
        stack.stop()
        redis_server.stop()
        mongo_server.stop()


@pytest.fixture
def restarts(service):
    """Bring back any data store a test stopped, even when the test fails."""
    yield
    for server in (service.redis, service.mongo):
        if server.process.poll() is not None:
            server.start()


def submit(service, **params):
    return requests.post(f"{service.url}/jobs", json=BODY, params=params, timeout=10)


def status(service, request_id):
    """Return the job's status, or None while the API answers 503 (a store coming back)."""
    return requests.get(f"{service.url}/jobs/{request_id}", timeout=10).json().get("status")


def all_complete(service, request_ids, timeout_s=60):
    wait_until(lambda: all(status(service, request_id) == "complete" for request_id in request_ids),
               timeout_s, "every job to complete", interval_s=0.25)


def test_with_redis_down_jobs_are_accepted_as_pending_and_complete_once_it_returns(service, restarts):
    service.redis.stop()
    responses = [submit(service, vendor=vendor) for vendor in ("sync", "async") * 3]
    assert [response.status_code for response in responses] == [202] * 6
    request_ids = [response.json()["request_id"] for response in responses]
    assert {status(service, request_id) for request_id in request_ids} == {"pending"}
    assert requests.get(f"{service.url}/readyz", timeout=10).status_code == 503
    service.redis.start()
    all_complete(service, request_ids)


def test_with_mongodb_down_the_api_answers_503_and_jobs_in_flight_complete_once_it_returns(service, restarts):
    syncs = [submit(service, vendor="sync").json()["request_id"] for _ in range(3)]
    asyncs = [submit(service, vendor="async").json()["request_id"] for _ in range(3)]
    wait_until(lambda: {status(service, r) for r in syncs} == {"processing"}
               and {status(service, r) for r in asyncs} == {"awaiting_webhook"}, 10, "vendor calls in flight")
    service.mongo.stop()
    refused = submit(service)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "MongoDB" in refused.json()["description"]
    lookup = requests.get(f"{service.url}/jobs/{syncs[0]}", timeout=10)
    assert lookup.status_code == 503 and lookup.headers["Retry-After"] == "5"
    # The async vendor's callbacks meet the outage too, and are retried by the vendor.
    wait_until(lambda: "unavailable during POST /vendor-webhook/async" in service.api.log(), 10, "a webhook refused with 503")
    service.mongo.start()
    all_complete(service, syncs + asyncs)
    assert submit(service).status_code == 202


def test_with_redis_down_while_workers_hold_messages_every_job_completes_and_every_message_settles(service, restarts):
    syncs = [submit(service, vendor="sync").json()["request_id"] for _ in range(3)]
    wait_until(lambda: {status(service, r) for r in syncs} == {"processing"}, 10, "vendor calls in flight")
    seen_before = service.process("worker").log().count("connection error")
    service.redis.stop()  # the workers hold the messages: whatever they do next meets the outage
    wait_until(lambda: service.process("worker").log().count("connection error") > seen_before, 20, "the worker to meet the outage")
    service.redis.start()
    all_complete(service, syncs)
    queue = redis.Redis.from_url(service.redis.url)
    wait_until(lambda: queue.xlen("job-queue") == 0 and queue.zcard("{job-queue}:delay") == 0, 30, "every message to settle")
    assert queue.xlen("{job-queue}:dead") == 0
    # A call whose outcome the outage kept from being recorded may be made again; a job completes once.
    for request_id in syncs:
        history = requests.get(f"{service.url}/jobs/{request_id}", timeout=10).json()
        assert history["status"] == "complete" and history["attempts"] == 1


def test_with_both_stores_down_a_submission_is_refused_not_lost(service, restarts):
    service.redis.stop()
    service.mongo.stop()
    response = submit(service)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    service.mongo.start()
    service.redis.start()
    request_id = wait_until(lambda: (r := submit(service)).status_code == 202 and r.json()["request_id"], 30, "the API to accept jobs again")
    all_complete(service, [request_id])
