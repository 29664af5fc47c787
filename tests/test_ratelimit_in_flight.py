"""max_in_flight with real worker processes: the cap holds across them, and a killed one's leases come back."""

import threading
import time

import pytest
import redis
import requests

from devtools.stack import Stack, free_ports, service_env, wait_until
from queueing.ratelimit import vendor_key
from tests.conftest import with_database
from tests.scripted_vendor import ScriptedVendor

DATABASE = "ratelimit_in_flight"
REGISTRY = """
[vendors.narrow]
mode = "sync"
url = "{url}"
rate_limit = "1000/second"
max_in_flight = 3
timeout_s = 1
"""


class HeldVendor(ScriptedVendor):
    """A vendor that answers only once `go` is set (or after `hold_s`), counting the calls it holds at once."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.hold_s = 0.0
        self.holding = self.most_held = 0
        self.lock = threading.Lock()
        self.answer = self.held

    def held(self, request_id: str):
        with self.lock:
            self.holding += 1
            self.most_held = max(self.most_held, self.holding)
        self.go.wait(self.hold_s or None)
        with self.lock:
            self.holding -= 1
        return 200, {}


@pytest.fixture(scope="module")
def vendor():
    held = HeldVendor()
    yield held
    held.go.set()
    held.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client, vendor):
    redis.Redis.from_url(redis_url).flushdb()  # no limiter state or messages left by other modules
    folder = tmp_path_factory.mktemp("in_flight")
    api_port, = free_ports(1)
    registry = folder / "vendors.toml"
    registry.write_text(REGISTRY.format(url=vendor.url))
    stack = Stack(service_env(redis_url, with_database(mongodb_uri, DATABASE), registry, api_port), folder)
    try:
        stack.start_api(api_port)
        stack.url = f"http://127.0.0.1:{api_port}"
        stack.redis = redis.Redis.from_url(redis_url)
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database(DATABASE)


def submit(stack) -> str:
    response = requests.post(f"{stack.url}/jobs", json={"name": "Ann"}, params={"vendor": "narrow"}, timeout=5)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def complete(stack, request_id, timeout_s=60):
    def done():
        return requests.get(f"{stack.url}/jobs/{request_id}", timeout=5).json()["status"] == "complete"
    wait_until(done, timeout_s, f"job {request_id} to complete", interval_s=0.1)


def test_two_worker_processes_never_hold_more_calls_than_max_in_flight(stack, vendor):
    vendor.hold_s = 0.3
    stack.start_worker("worker-1", threads=8)
    stack.start_worker("worker-2", threads=8)
    ids = [submit(stack) for _ in range(15)]
    for request_id in ids:
        complete(stack, request_id)
    assert vendor.most_held == 3  # the cap is used, never passed
    assert stack.redis.zcard(vendor_key("narrow", "inflight")) == 0  # every lease given back
    stack.stop("worker-1")
    stack.stop("worker-2")


def test_a_killed_workers_leases_come_back_after_the_call_timeout(stack, vendor):
    vendor.hold_s, vendor.holding, vendor.most_held = 0.0, 0, 0  # hold every call until `go`
    stack.start_worker("doomed", threads=8)
    for _ in range(3):
        submit(stack)
    wait_until(lambda: vendor.holding == 3, 30, "the worker to hold three calls")
    leases = [expiry for _, expiry in stack.redis.zrange(vendor_key("narrow", "inflight"), 0, -1, withscores=True)]
    stack.process("doomed").kill()  # kill -9: its leases are never given back
    # Until the server drops its connections, a dead consumer's blocked read could still take a new message.
    wait_until(lambda: not any(c["cmd"] == "xreadgroup" for c in stack.redis.client_list()), 10, "the dead worker's reads to end")
    seconds, micros = stack.redis.time()
    last_lease_ends_at = time.monotonic() + (max(leases) - (seconds * 1000 + micros / 1000)) / 1000
    calls_before = len(vendor.calls)
    vendor.go.set()  # the killed worker's calls end at the vendor; their leases stay taken
    stack.start_worker("survivor", threads=8)
    stack.start_clock()  # the later jobs wait in line: the clock's dispatch finds the leases expired
    later = [submit(stack) for _ in range(3)]
    for request_id in later:
        complete(stack, request_id)
    first_later_call = vendor.calls[calls_before][0]
    assert first_later_call >= last_lease_ends_at - 0.05  # not before the leases expired
