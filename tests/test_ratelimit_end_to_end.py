"""Rate limits, pushback and failures with the real processes: API, 2 workers x 8 threads, vendors."""

import bisect
import statistics

import pytest
import requests

from devtools.stack import Stack, free_ports, service_env, wait_until
from queueing.ratelimit import vendor_key
from tests.conftest import with_database
from tests.scripted_vendor import ScriptedVendor

DATABASE = "ratelimit_e2e"
REGISTRY = """
[vendors.steady]  # the real mock, limited exactly like us
mode = "sync"
url = "http://127.0.0.1:{mock_port}/fetch"
rate_limit = "10/second"

[vendors.pushy]  # stricter than we were told
mode = "sync"
url = "{pushy}"
rate_limit = "1000/second"

[vendors.broken]
mode = "sync"
url = "{broken}"
rate_limit = "1000/second"
max_retries = 3
retry_backoff_s = 0.5
breaker_failures = 0

[vendors.warmup]
mode = "sync"
url = "{warmup}"

[vendors.rejecting]
mode = "sync"
url = "{rejecting}"
rate_limit = "1000/second"

[vendors.flaky]
mode = "sync"
url = "{flaky}"
rate_limit = "1000/second"
max_retries = 50
retry_backoff_s = 0.05
retry_backoff_max_s = 0.1
breaker_failures = 3
breaker_cooldown_s = 1

[vendors.stuck]
mode = "sync"
url = "{stuck}"
rate_limit = "1000/second"
breaker_failures = 1
breaker_cooldown_s = 30
max_wait_s = 2
"""
# A delayed message reaches a worker up to about one consumer timeout (dramatiq's default 1 s) late.
BROKER_DELAY_PRECISION_S = 1.1
SCRIPTED = ("warmup", "pushy", "broken", "rejecting", "flaky", "stuck")


@pytest.fixture(scope="module")
def vendors():
    scripted = {name: ScriptedVendor() for name in SCRIPTED}
    yield scripted
    for vendor in scripted.values():
        vendor.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client, vendors):
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # no limiter state or messages left by other modules
    folder = tmp_path_factory.mktemp("ratelimit")
    api_port, mock_port = free_ports(2)
    registry = folder / "vendors.toml"
    registry.write_text(REGISTRY.format(mock_port=mock_port, **{name: vendor.url for name, vendor in vendors.items()}))
    stack = Stack(service_env(redis_url, with_database(mongodb_uri, DATABASE), registry, api_port), folder)
    try:
        stack.start_mock("sync", mock_port, "--rate-limit", "10/second")
        stack.start_api(api_port)
        stack.start_worker(processes=2, threads=8)
        stack.url = f"http://127.0.0.1:{api_port}"
        stack.mock_url = f"http://127.0.0.1:{mock_port}"
        stack.redis = redis.Redis.from_url(redis_url)
        # A slot is kept by a running worker: wait until the workers serve jobs.
        final(stack, submit(stack, "warmup").json()["request_id"])
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database(DATABASE)


def submit(stack, vendor):
    response = requests.post(f"{stack.url}/jobs", json={"name": "Ann"}, params={"vendor": vendor}, timeout=5)
    assert response.status_code == 202, response.text
    return response


def job(stack, request_id):
    return requests.get(f"{stack.url}/jobs/{request_id}", timeout=5)


def final(stack, request_id, timeout_s=30):
    def finished():
        view = job(stack, request_id).json()
        return view if view["status"] in ("complete", "failed", "timed_out") else None
    return wait_until(finished, timeout_s, f"job {request_id} to finish", interval_s=0.1)


def longest_increasing_run(numbers):
    """Return the length of the longest increasing subsequence."""
    tails = []
    for number in numbers:
        place = bisect.bisect_left(tails, number)
        tails[place:place + 1] = [number]
    return len(tails)


def started_at(mongo_client, request_id):
    """Return when the job was claimed for its vendor call, each time."""
    history = mongo_client[DATABASE]["jobs"].find_one({"_id": request_id})["history"]
    return [entry["at"] for entry in history if entry.get("state") == "processing"]


def test_two_workers_with_eight_threads_keep_to_ten_a_second_and_the_vendor_refuses_nothing(stack, mongo_client):
    requests.post(f"{stack.mock_url}/stats/reset", timeout=5)
    responses = [submit(stack, "steady") for _ in range(50)]
    ids = [response.json()["request_id"] for response in responses]
    # The last job waits about four windows: its answers say so.
    assert int(responses[-1].headers["Retry-After"]) >= 3
    waiting = job(stack, ids[-1])
    assert waiting.json()["estimated_completion_at"] and int(waiting.headers["Retry-After"]) >= 2

    jobs = [final(stack, request_id) for request_id in ids]

    stats = requests.get(f"{stack.mock_url}/stats", timeout=5).json()
    assert stats["refused"] == 0 and stats["served"] == 50
    assert stats["max_in_window"] <= 10
    assert {(view["status"], view["attempts"]) for view in jobs} == {("complete", 1)}
    # Submission order, as far as sixteen threads taking messages side by side allow.
    starts = [started_at(mongo_client, request_id)[0] for request_id in ids]
    order = sorted(range(len(ids)), key=starts.__getitem__)
    # Submission order, but for those a later one overtook: the broker delivers a delayed message a
    # few ms to 100 ms late, more than the tenth of a second between two starts here.
    assert longest_increasing_run(order) >= 30


def test_a_429_pauses_the_vendor_for_every_worker_and_costs_no_attempt(stack, vendors):
    pushy = vendors["pushy"]
    pushy.answer = lambda request_id: (429, {"Retry-After": "2"}) if len(pushy.calls) == 1 else (200, {})
    first = submit(stack, "pushy").json()["request_id"]
    wait_until(lambda: stack.redis.hexists(vendor_key("pushy", "state"), "pause"), 10, "the worker to record the 429's pause")
    pushed_back_at = pushy.calls[0][0]
    others = [submit(stack, "pushy").json()["request_id"] for _ in range(8)]

    jobs = [final(stack, request_id) for request_id in [first, *others]]

    assert {(view["status"], view["attempts"]) for view in jobs} == {("complete", 1)}
    later_calls = [at for at, _ in pushy.calls[1:]]
    assert len(later_calls) == 9 and min(later_calls) >= pushed_back_at + 2 - 0.05


def test_5xx_is_retried_with_growing_gaps_up_to_max_retries_then_failed(stack, vendors):
    broken = vendors["broken"]
    broken.answer = lambda request_id: (503, {})
    ids = [submit(stack, "broken").json()["request_id"] for _ in range(8)]

    jobs = [final(stack, request_id) for request_id in ids]

    assert {view["status"] for view in jobs} == {"failed"}
    assert {view["error"] for view in jobs} == {"gave up after 4 attempts: broken answered 503"}
    gaps = []
    for request_id in ids:
        calls = broken.calls_for(request_id)
        assert len(calls) == 4
        gaps.append([later - earlier for earlier, later in zip(calls, calls[1:])])
    for n, ceiling_s in enumerate([0.5, 1.0, 2.0]):
        # Full jitter under a doubling cap, plus the broker's delay precision (its consumer timeout).
        assert all(job_gaps[n] <= ceiling_s + BROKER_DELAY_PRECISION_S for job_gaps in gaps)
    assert statistics.mean(g[0] for g in gaps) < statistics.mean(g[2] for g in gaps)


def test_4xx_fails_the_job_at_once(stack, vendors):
    rejecting = vendors["rejecting"]
    rejecting.answer = lambda request_id: (400, {})
    request_id = submit(stack, "rejecting").json()["request_id"]
    view = final(stack, request_id)
    assert view["status"] == "failed" and view["attempts"] == 1
    assert view["error"] == "rejecting rejected the request with 400"
    assert len(rejecting.calls_for(request_id)) == 1


def test_the_breaker_opens_after_three_failures_probes_after_the_cooldown_and_closes(stack, vendors):
    flaky = vendors["flaky"]
    # Three failures and two failing probes, then success: decided by the call's
    # number, never by when the test looks.
    flaky.answer = lambda request_id: (503, {}) if len(flaky.calls) <= 5 else (200, {})
    first = submit(stack, "flaky").json()["request_id"]
    wait_until(lambda: len(flaky.calls) >= 4, 10, "three failures and a probe")
    others = [submit(stack, "flaky").json()["request_id"] for _ in range(5)]  # while open: they wait

    jobs = [final(stack, request_id) for request_id in [first, *others]]

    assert {view["status"] for view in jobs} == {"complete"}
    times = [at for at, _ in flaky.calls]
    opened_at, first_probe, second_probe = times[2], times[3], times[4]
    assert first_probe - opened_at >= 1 - 0.05 and second_probe - first_probe >= 1 - 0.05
    assert len(times) == 5 + 6  # nothing but the probes while open; then every job once


def test_a_job_held_by_an_open_breaker_past_max_wait_fails_and_new_ones_are_refused(stack, vendors):
    stuck = vendors["stuck"]
    stuck.answer = lambda request_id: (503, {})
    request_id = submit(stack, "stuck").json()["request_id"]
    view = final(stack, request_id, timeout_s=10)
    assert view["status"] == "failed" and view["attempts"] == 1
    assert "circuit breaker is open" in view["error"] and "max_wait_s (2 s)" in view["error"]
    [gave_up] = [event for event in stack.process("worker").logged_events(request_id) if "gave up" in event["message"]]
    assert gave_up["level"] == "WARNING" and gave_up["vendor"] == "stuck"
    refused = requests.post(f"{stack.url}/jobs", json={"name": "Ann"}, params={"vendor": "stuck"}, timeout=5)
    assert refused.status_code == 503 and 20 <= int(refused.headers["Retry-After"]) <= 30
    assert len(stuck.calls) == 1
