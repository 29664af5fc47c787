"""The mock vendors: body shapes, exact rate limits, injected failures, signed and retried callbacks."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
import requests
from standardwebhooks import Webhook

from devtools.stack import CallbackReceiver, wait_until
from devtools.stores import free_port
from tests.signing import new_secret
from vendors import mock_async, mock_sync
from vendors.mock_async import AsyncSettings
from vendors.mock_common import MockSettings, MockVendor, SlidingWindowLimiter, parse_latency_ms

ROOT = Path(__file__).resolve().parents[1]
SECRET = new_secret("mock-async-vendor")
STARTUP_TIMEOUT_S = 15.0
CALLBACK_DEADLINE_S = 5.0


def fetch_body(request_id: str = "req-1", callback_url: str | None = None) -> dict[str, Any]:
    """Build the body our service sends a vendor."""
    body: dict[str, Any] = {"request_id": request_id, "payload": {"name": "Ann Lee", "password": "hunter2"}}
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., CallbackReceiver]]:
    receivers: list[CallbackReceiver] = []

    def make(*statuses: int) -> CallbackReceiver:
        receivers.append(CallbackReceiver(statuses))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


def start_mock(module: str, log_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start a mock vendor process on a free port and wait until /healthz answers."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{module} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{base_url}/healthz", timeout=0.5).status_code == 200:
                return process, base_url
        except requests.ConnectionError:
            time.sleep(0.05)
    stop_mock(process)
    pytest.fail(f"{module} did not answer /healthz within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")


def stop_mock(process: subprocess.Popen) -> None:
    """Terminate a mock process, killing it if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def sync_server(tmp_path_factory) -> Iterator[str]:
    process, base_url = start_mock("vendors.mock_sync", tmp_path_factory.mktemp("mock") / "sync.log",
                                   "--rate-limit", "5/minute")
    yield base_url
    stop_mock(process)


@pytest.fixture(scope="module")
def async_server(tmp_path_factory) -> Iterator[str]:
    process, base_url = start_mock("vendors.mock_async", tmp_path_factory.mktemp("mock") / "async.log",
                                   "--secret", SECRET, "--callback-delay-s", "0.1",
                                   "--callback-retries", "3", "--callback-backoff-s", "0.05")
    yield base_url
    stop_mock(process)


@pytest.fixture
def sync_url(sync_server: str) -> str:
    requests.post(f"{sync_server}/stats/reset", timeout=5).raise_for_status()
    return sync_server


@pytest.fixture
def async_url(async_server: str) -> str:
    requests.post(f"{async_server}/stats/reset", timeout=5).raise_for_status()
    return async_server


@pytest.mark.parametrize("text, expected", [
    pytest.param("0", (0.0, 0.0), id="none"),
    pytest.param("120", (120.0, 120.0), id="fixed"),
    pytest.param("50-200", (50.0, 200.0), id="range"),
])
def test_parse_latency_reads_fixed_or_range(text, expected):
    assert parse_latency_ms(text) == expected


def test_window_admits_again_once_the_oldest_request_leaves_it():
    now = [100.0]
    limiter = SlidingWindowLimiter(2, 10.0, clock=lambda: now[0])
    assert limiter.acquire() is None
    now[0] = 101.0
    assert limiter.acquire() is None
    now[0] = 105.2
    assert limiter.acquire() == 5  # the first request leaves the window at 110.0
    now[0] = 110.0
    assert limiter.acquire() is None
    assert limiter.acquire() == 1  # never less than one second
    assert limiter.max_in_window == 2


def test_sync_mock_answers_padded_record_with_pii():
    client = falcon.testing.TestClient(mock_sync.create_app(MockSettings()))
    result = client.simulate_post("/fetch", json=fetch_body("req-7"))
    assert result.status_code == 200
    assert result.json == {
        "request_id": "req-7", "name": "  Ann Lee  ", "email": "john@example.com", "phone": "555-0100",
        "pii": "sensitive", "ssn": "123-45-6789", "account": "xyz", "balance": 5000,
    }


def test_sync_mock_admits_exactly_its_limit_from_a_concurrent_burst(sync_url):
    def post(number: int) -> requests.Response:
        return requests.post(f"{sync_url}/fetch", json=fetch_body(f"req-{number}"), timeout=5)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, range(12)))

    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 7
    refused = [r for r in responses if r.status_code == 429]
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    assert refused[0].json()["title"] == "429 Too Many Requests"
    stats = requests.get(f"{sync_url}/stats", timeout=5).json()
    assert stats == {"served": 5, "refused": 7, "failed": 0, "max_in_window": 5, "max_in_windows": [5],
                     "max_in_progress": stats["max_in_progress"]}
    assert 1 <= stats["max_in_progress"] <= 5


def test_sync_mock_refuses_the_request_after_its_limit_until_reset(sync_url):
    statuses = [requests.post(f"{sync_url}/fetch", json=fetch_body(), timeout=5).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]

    reset = requests.post(f"{sync_url}/stats/reset", timeout=5)

    assert reset.json() == {"served": 0, "refused": 0, "failed": 0, "max_in_window": 0, "max_in_windows": [0], "max_in_progress": 0}
    assert requests.post(f"{sync_url}/fetch", json=fetch_body(), timeout=5).status_code == 200


def test_failure_rate_one_answers_every_request_503():
    client = falcon.testing.TestClient(mock_sync.create_app(MockSettings(failure_rate=1.0)))
    statuses = [client.simulate_post("/fetch", json=fetch_body()).status_code for _ in range(3)]
    assert statuses == [503] * 3
    assert client.simulate_get("/stats").json == {
        "served": 0, "refused": 0, "failed": 3, "max_in_window": 3, "max_in_windows": [3], "max_in_progress": 1,
    }


def test_timeout_rate_one_hangs_then_answers_504():
    client = falcon.testing.TestClient(mock_sync.create_app(MockSettings(timeout_rate=1.0, hang_s=0.2)))
    started = time.monotonic()
    result = client.simulate_post("/fetch", json=fetch_body())
    assert result.status_code == 504
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("app_factory, kwargs", [
    pytest.param(mock_sync.create_app, {"body": b"{not json", "headers": {"Content-Type": "application/json"}},
                 id="malformed JSON"),
    pytest.param(mock_sync.create_app, {"body": b"", "headers": {"Content-Type": "application/json"}}, id="empty"),
    pytest.param(mock_sync.create_app, {"json": ["req-1"]}, id="not an object"),
    pytest.param(mock_sync.create_app, {"json": {"payload": {}}}, id="no request_id"),
    pytest.param(mock_async.create_app, {"json": fetch_body()}, id="async without callback_url"),
])
def test_unusable_body_gets_400_json_error(app_factory, kwargs):
    client = falcon.testing.TestClient(app_factory())
    result = client.simulate_post("/fetch", **kwargs)
    assert result.status_code == 400
    assert set(result.json) == {"title", "description"}
    assert client.simulate_get("/stats").json["served"] == 0


def test_stats_reset_zeroes_counters_and_empties_window():
    client = falcon.testing.TestClient(mock_sync.create_app(MockSettings(rate_limit=((1, 60.0),))))
    assert client.simulate_post("/fetch", json=fetch_body()).status_code == 200
    assert client.simulate_post("/fetch", json=fetch_body()).status_code == 429
    assert client.simulate_get("/stats").json == {
        "served": 1, "refused": 1, "failed": 0, "max_in_window": 1, "max_in_windows": [1], "max_in_progress": 1,
    }

    assert client.simulate_post("/stats/reset").status_code == 200

    assert client.simulate_get("/stats").json == {
        "served": 0, "refused": 0, "failed": 0, "max_in_window": 0, "max_in_windows": [0], "max_in_progress": 0,
    }
    assert client.simulate_post("/fetch", json=fetch_body()).status_code == 200


def test_health_answers_ok():
    client = falcon.testing.TestClient(mock_async.create_app(AsyncSettings(callback_threads=1)))
    assert client.simulate_get("/healthz").json == {"status": "ok"}


def test_async_mock_accepts_then_calls_back_signed_with_the_data(async_url, receiver_factory):
    receiver = receiver_factory()

    response = requests.post(f"{async_url}/fetch", json=fetch_body("req-9", receiver.url), timeout=5)

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "request_id": "req-9"}
    headers, body = wait_until(lambda: receiver.calls, CALLBACK_DEADLINE_S)[0]
    assert Webhook(SECRET).verify(body, headers) == {
        "request_id": "req-9", "account": "xyz", "balance": 5000, "name": "  Ann Lee  ", "email": "john@example.com",
    }
    stats = wait_until(lambda: (s := requests.get(f"{async_url}/stats", timeout=5).json())["callbacks_delivered"] and s, CALLBACK_DEADLINE_S)
    assert stats == {"served": 1, "refused": 0, "failed": 0, "max_in_window": 1, "max_in_windows": [1],
                     "max_in_progress": 1, "callbacks_delivered": 1, "callbacks_failed": 0}


def test_async_mock_retries_a_callback_answered_500_twice(async_url, receiver_factory):
    receiver = receiver_factory(500, 500, 200)

    requests.post(f"{async_url}/fetch", json=fetch_body("req-3", receiver.url), timeout=5).raise_for_status()

    calls = wait_until(lambda: len(receiver.calls) >= 3 and receiver.calls, CALLBACK_DEADLINE_S)
    assert len({headers["webhook-id"] for headers, _ in calls}) == 1
    for headers, body in calls:
        assert Webhook(SECRET).verify(body, headers)["request_id"] == "req-3"
    stats = wait_until(lambda: (s := requests.get(f"{async_url}/stats", timeout=5).json())["callbacks_delivered"] and s, CALLBACK_DEADLINE_S)
    assert (stats["callbacks_delivered"], stats["callbacks_failed"]) == (1, 0)
    assert len(receiver.calls) == 3


def test_async_mock_without_secret_calls_back_unsigned(receiver_factory):
    receiver = receiver_factory()
    client = falcon.testing.TestClient(mock_async.create_app(AsyncSettings(callback_delay_s=0, callback_threads=1)))

    assert client.simulate_post("/fetch", json=fetch_body("req-4", receiver.url)).status_code == 202

    headers, body = wait_until(lambda: receiver.calls, CALLBACK_DEADLINE_S)[0]
    assert not {name.lower() for name in headers} & {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["Content-Type"] == "application/json"
    assert body == b'{"request_id":"req-4","account":"xyz","balance":5000,"name":"  Ann Lee  ","email":"john@example.com"}'


@pytest.mark.parametrize("statuses, attempts, outcome", [
    pytest.param((400,), 1, "callbacks_failed", id="4xx is final"),
    pytest.param((429, 200), 2, "callbacks_delivered", id="429 is retried"),
    pytest.param((503, 503, 503), 3, "callbacks_failed", id="5xx until retries run out"),
])
def test_async_mock_retries_only_what_may_succeed_later(statuses, attempts, outcome, receiver_factory):
    receiver = receiver_factory(*statuses)
    settings = AsyncSettings(callback_delay_s=0, callback_retries=2, callback_backoff_s=0.01, callback_threads=1)
    client = falcon.testing.TestClient(mock_async.create_app(settings))

    client.simulate_post("/fetch", json=fetch_body(callback_url=receiver.url))

    wait_until(lambda: client.simulate_get("/stats").json[outcome] == 1, CALLBACK_DEADLINE_S)
    assert len(receiver.calls) == attempts


def test_cli_flags_default_to_environment_variables(monkeypatch):
    monkeypatch.setenv("MOCK_ASYNC_RATE_LIMIT", "7/second")
    monkeypatch.setenv("MOCK_ASYNC_SECRET", SECRET)
    monkeypatch.setenv("MOCK_ASYNC_CALLBACK_DELAY_S", "0.25")

    args = mock_async.cli_parser().parse_args(["--callback-delay-s", "0", "--host", "0.0.0.0"])

    assert (args.rate_limit, args.secret, args.callback_delay_s, args.host, args.port) == (
        ((7, 1.0),), SECRET, 0.0, "0.0.0.0", 6002)


@pytest.mark.parametrize("argv, env", [
    pytest.param(["--rate-limit", "lots"], {}, id="flag"),
    pytest.param([], {"MOCK_SYNC_RATE_LIMIT": "5/week"}, id="environment"),
])
def test_cli_refuses_a_malformed_rate_limit(argv, env, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        mock_sync.cli_parser().parse_args(argv)
    assert "--rate-limit" in capsys.readouterr().err


def test_a_mock_with_several_limits_enforces_each_and_counts_a_refusal_against_none():
    now = [100.0]
    vendor = MockVendor(MockSettings(rate_limit=((2, 1.0), (3, 60.0))), clock=lambda: now[0])
    vendor.admit()
    vendor.admit()
    with pytest.raises(falcon.HTTPTooManyRequests):
        vendor.admit()  # the second's limit
    now[0] += 1.0
    vendor.admit()
    now[0] += 1.0
    with pytest.raises(falcon.HTTPTooManyRequests):
        vendor.admit()  # the minute's limit
    assert vendor.report()["max_in_windows"] == [2, 3] and vendor.report()["refused"] == 2
