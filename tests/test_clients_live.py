"""Clients with the real processes: API keys over HTTP, the seed curl flow under AUTH=open, cancels racing the worker."""

import math
import time

import pymongo
import pytest
import requests

from devtools.stack import BIN, Stack, free_ports, service_env, wait_until
from service.clients.store import ClientStore
from service.store import payload_cipher
from tests.conftest import with_database
from tests.scripted_vendor import scripted_vendors, served

DATABASE = "clients_live"
REGISTRY = """
[vendors.paced]
mode = "sync"
url = "{paced}"
rate_limit = "4/second"

[vendors.async]
mode = "async"
url = "{accepting}"
rate_limit = "6000/minute"
webhook_auth = "none"
"""
FINAL = ("complete", "failed", "timed_out", "cancelled")


@pytest.fixture(scope="module")
def vendors():
    with scripted_vendors("paced", "accepting") as scripted:
        yield scripted


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client, vendors):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    folder = tmp_path_factory.mktemp("clients")
    keys_port, open_port = free_ports(2)
    registry = folder / "vendors.toml"
    registry.write_text(REGISTRY.format(**{name: vendor.url for name, vendor in vendors.items()}))
    stack = Stack({**service_env(redis_url, with_database(mongodb_uri, DATABASE), registry, keys_port), "AUTH": "keys"}, folder)
    try:
        stack.start_api(keys_port)
        stack.env.update(AUTH="open", PORT=str(open_port))
        argv = [str(BIN / "gunicorn"), "--config", "service/gunicorn_conf.py", "--workers", "1", "service.app:create_app()"]
        stack.start("api-open", argv, f"http://127.0.0.1:{open_port}/healthz")
        stack.start_worker(threads=4)
        stack.url, stack.open_url = f"http://127.0.0.1:{keys_port}", f"http://127.0.0.1:{open_port}"
        stack.clients = ClientStore(mongo_client[DATABASE], payload_cipher(stack.env["ENCRYPTION_KEY"]))
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database(DATABASE)


def view(url, request_id, headers=None):
    return requests.get(f"{url}/jobs/{request_id}", headers=headers, timeout=5)


def final(url, request_id, headers=None, timeout_s=60):
    def finished():
        job = view(url, request_id, headers).json()
        return job if job["status"] in FINAL else None
    return wait_until(finished, timeout_s, f"job {request_id} to finish", interval_s=0.1)


def test_a_request_without_a_key_is_401_under_auth_keys(stack):
    for response in (requests.post(f"{stack.url}/jobs", json={"name": "x"}, timeout=5),
                     requests.get(f"{stack.url}/jobs", timeout=5)):
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["title"] == "API key required"
    assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200  # health needs no key


def test_a_client_over_its_rate_gets_429_from_every_api_process_while_another_is_served(stack):
    _, hasty = stack.clients.add("hasty", rate_per_s=3)
    _, calm = stack.clients.add("calm")
    session = requests.Session()  # keep-alive connections land on either of the API's two processes
    started = time.monotonic()
    answers = [session.get(f"{stack.url}/jobs", headers={"Authorization": f"Bearer {hasty}"}, timeout=5) for _ in range(20)]
    windows = math.ceil(time.monotonic() - started) + 1  # the one-second windows the requests can have met
    refused = [answer for answer in answers if answer.status_code == 429]
    assert answers[0].status_code == 200 and answers[0].headers["RateLimit-Policy"] == '"requests";q=3;w=1'
    # Counted in Redis, not per process: whichever process serves it, a window lets 3 through.
    assert 20 - len(refused) <= 3 * windows and refused and all(answer.status_code in (200, 429) for answer in answers)
    assert refused[0].headers["Retry-After"] == "1" and refused[0].headers["RateLimit"].startswith('"requests";r=0;')
    served = requests.get(f"{stack.url}/jobs", headers={"Authorization": f"Bearer {calm}"}, timeout=5)
    assert served.status_code == 200 and served.headers["RateLimit"].startswith('"requests";r=49;')


def test_the_seed_curl_flow_works_verbatim_under_auth_open(stack):
    submitted = requests.post(f"{stack.open_url}/jobs?vendor=async", json={"name": "TestUser", "email": "test@mail.com", "password": "pass"}, timeout=5)
    assert submitted.status_code == 202
    request_id = submitted.json()["request_id"]
    wait_until(lambda: view(stack.open_url, request_id).json()["status"] == "awaiting_webhook", 30, "the vendor to accept the job")
    hook = requests.post(f"{stack.open_url}/vendor-webhook/async", json={"request_id": request_id, "account": "xyz", "balance": 5000}, timeout=5)
    assert hook.status_code == 200 and hook.json() == {"message": "Result saved"}
    job = view(stack.open_url, request_id).json()
    assert job["status"] == "complete" and job["result"] == {"account": "xyz", "balance": 5000}
    ready = requests.get(f"{stack.open_url}/readyz", timeout=5).json()
    assert any("AUTH=open" in warning for warning in ready["warnings"])
    assert not any("AUTH=open" in warning for warning in requests.get(f"{stack.url}/readyz", timeout=5).json()["warnings"])
    assert "AUTH=open" in stack.process("api-open").log() and "AUTH=open" not in stack.process("api").log()


def submit_all(stack, key, count, vendor="paced"):
    """Submit `count` jobs as the client with `key`; return their request_ids."""
    ids = []
    for _ in range(count):
        response = requests.post(f"{stack.url}/jobs", json={"name": "Ann"}, params={"vendor": vendor},
                                 headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert response.status_code == 202, response.text
        ids.append(response.json()["request_id"])
    return ids


def test_clients_that_come_later_take_turns_with_an_earlier_clients_backlog(stack, vendors):
    heavy, light, lighter = (stack.clients.add(name)[1] for name in ("heavy", "light", "lighter"))
    paced = vendors["paced"]
    paced.answer, paced.calls = served, []
    heavy_ids = submit_all(stack, heavy, 24)  # six seconds of the vendor's starts
    light_ids = submit_all(stack, light, 4) + submit_all(stack, lighter, 4)
    owners = {**dict.fromkeys(heavy_ids, heavy), **dict.fromkeys(light_ids[:4], light), **dict.fromkeys(light_ids[4:], lighter)}
    for request_id, key in owners.items():
        assert final(stack.url, request_id, {"Authorization": f"Bearer {key}"})["status"] == "complete"
    order = [request_id for _, request_id in sorted(paced.calls)]
    assert sorted(order) == sorted(heavy_ids + light_ids)
    # First come, first served would call the light clients' jobs last (the 25th to the 32nd call).
    # Taking turns, the three clients share the calls after the light ones arrive, a third each.
    assert max(order.index(request_id) for request_id in light_ids) < 20


def test_cancels_racing_the_worker_never_let_a_queued_job_reach_the_vendor(stack, vendors):
    _, key = stack.clients.add("racer")
    headers = {"Authorization": f"Bearer {key}"}
    paced = vendors["paced"]
    paced.calls = []
    paced.answer = lambda _: (time.sleep(0.3), (200, {}))[1]  # long enough for some cancels to find the call in flight
    ids = []
    for _ in range(24):  # four a second: slots spread over six seconds
        response = requests.post(f"{stack.url}/jobs", json={"name": "Ann"}, params={"vendor": "paced"}, headers=headers, timeout=5)
        assert response.status_code == 202, response.text
        ids.append(response.json()["request_id"])
    cancelled = []
    for request_id in ids[1::2]:  # while the worker starts the others, one every quarter second
        answer = requests.post(f"{stack.url}/jobs/{request_id}/cancel", headers=headers, timeout=5)
        assert (answer.status_code, answer.json().get("status")) in ((200, "cancelled"), (409, None)), answer.text
        if answer.status_code == 200:
            cancelled.append(request_id)
        time.sleep(0.25)
    outcomes = {request_id: final(stack.url, request_id, headers)["status"] for request_id in ids}
    jobs = pymongo.MongoClient(stack.env["MONGODB_URI"])[DATABASE].jobs
    before_cancel = {}
    for request_id in cancelled:
        states = [entry.get("state") for entry in jobs.find_one({"_id": request_id})["history"] if entry.get("state")]
        before_cancel[request_id] = states[-2]
        if "processing" not in states:  # cancelled while it waited: the vendor never heard of it
            assert paced.calls_for(request_id) == [], f"{request_id} was called after it was cancelled while {states[-2]}"
        assert jobs.find_one({"_id": request_id}).get("result") is None
    assert sum(state == "queued" for state in before_cancel.values()) >= 6  # the race was run, mostly against queued jobs
    assert all(outcomes[i] == "complete" for i in ids[::2]) and all(outcomes[i] == "cancelled" for i in cancelled)
    # The vendor was called once for each completed job and each job cancelled during its call, and for nothing else.
    called = [request_id for _, request_id in paced.calls]
    started = {i for i in ids if outcomes[i] == "complete"} | {i for i, state in before_cancel.items() if state == "processing"}
    assert len(called) == len(set(called)) and set(called) == started
