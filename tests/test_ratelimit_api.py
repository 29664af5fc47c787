"""Honest waiting through the API: polling hints, completion estimates, and a bounded backlog."""

import tomllib
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import falcon.testing
import pytest

from queueing.connection import build_broker, connect_redis
from queueing.ratelimit import RateLimiter
from service.app import create_app
from service.cleaning import Cleaner
from service.clients.store import Client
from service.errors import JobNotFound
from service.idempotency import IdempotencyKeys
from service.intake import Intake
from service.jobs import Jobs
from service.outcomes import Outcomes
from service.store import PUBLIC_CLIENT
from service.waiting import Waiting
from vendors.registry import parse_registry

# One job a minute: the first starts at once, every further one waits a minute more (no worker runs).
REGISTRY = """
[vendors.slow]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "1/minute"
max_backlog = 3

[vendors.spare]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "1/minute"
max_backlog = 1
"""
# The margin is a few ms at most here: nothing reports delays.
MINUTE_PLUS_MARGIN = timedelta(seconds=60)


@pytest.fixture
def client(config, tmp_path):
    registry = tmp_path / "vendors.toml"
    registry.write_text(REGISTRY)
    return falcon.testing.TestClient(create_app(replace(config, vendors_file=str(registry))))


def submit(client, vendor=None):
    return client.simulate_post("/jobs", json={"name": "Ann"}, params={"vendor": vendor} if vendor else None)


def test_a_new_job_gets_a_polling_hint_and_a_completion_estimate(client):
    response = submit(client, "slow")
    assert response.status_code == 202 and response.headers["Retry-After"] == "1"
    job = client.simulate_get(f"/jobs/{response.json['request_id']}")
    assert job.json["status"] == "queued" and job.headers["Retry-After"] == "1"
    estimate = datetime.fromisoformat(job.json["estimated_completion_at"])
    assert estimate - datetime.now(timezone.utc) < timedelta(seconds=2)


def test_jobs_further_back_in_the_backlog_are_told_to_wait_longer(client):
    responses = [submit(client, "slow") for _ in range(3)]
    ids = [response.json["request_id"] for response in responses]
    estimates = [datetime.fromisoformat(client.simulate_get(f"/jobs/{i}").json["estimated_completion_at"]) for i in ids]
    assert estimates[1] - estimates[0] == pytest.approx(MINUTE_PLUS_MARGIN, abs=timedelta(seconds=0.5))
    assert estimates[2] - estimates[1] == pytest.approx(MINUTE_PLUS_MARGIN, abs=timedelta(seconds=0.5))
    # Polling hints follow the estimate, up to a minute, so that a client learns of changes.
    assert [response.headers["Retry-After"] for response in responses] == ["1", "60", "60"]


def test_a_pinned_vendor_with_a_full_backlog_answers_503_with_retry_after(client):
    # One starts at once; three wait.
    assert [submit(client, "slow").status_code for _ in range(4)] == [202] * 4
    refused = submit(client, "slow")
    assert refused.status_code == 503
    assert 59 <= int(refused.headers["Retry-After"]) <= 61  # when the next waiting job starts
    assert refused.json["description"] == "vendor 'slow' takes no more work now: 3 jobs are waiting already"


def test_unpinned_jobs_go_to_another_vendor_while_one_is_full_then_503(client):
    vendors = [client.simulate_get(f"/jobs/{submit(client).json['request_id']}").json["vendor"] for _ in range(6)]
    assert sorted(vendors) == ["slow"] * 4 + ["spare"] * 2
    assert submit(client).status_code == 503


def test_a_final_job_has_no_estimate_and_no_polling_hint(client, store):
    request_id = submit(client, "slow").json["request_id"]
    store.fail(request_id, "m1", "test")
    job = client.simulate_get(f"/jobs/{request_id}")
    assert "estimated_completion_at" not in job.json and "Retry-After" not in job.headers


@pytest.fixture
def jobs(config, store, redis_client):
    registry = parse_registry(tomllib.loads(REGISTRY), "test registry")
    broker = build_broker(connect_redis(config.redis_url))
    waiting = Waiting(RateLimiter(redis_client, config.rate_limit_margin_ms), registry, broker)
    yield Jobs(
        store, Outcomes(store, None), registry, Intake(store, registry, waiting, broker), Cleaner(()), waiting,
        IdempotencyKeys(redis_client, config.encryption_key),
    )
    broker.close()


def test_a_batch_of_reads_gives_each_its_own_job_and_estimate(jobs, store):
    finished, first, second = (jobs.submit(Client(PUBLIC_CLIENT), {"name": "Ann"}, "slow")[0] for _ in range(3))
    store.fail(finished, "m1", "test")
    views = jobs._views_of([(i, PUBLIC_CLIENT) for i in (finished, first, "no-such-job", second, first)])  # one batch
    assert [view.args[0] if isinstance(view, JobNotFound) else view["request_id"] for view in views] == [
        finished, first, "no-such-job", second, first,
    ]
    assert "estimated_completion_at" not in views[0] and views[0]["status"] == "failed"
    assert views[3]["estimated_completion_at"] - views[1]["estimated_completion_at"] == pytest.approx(
        MINUTE_PLUS_MARGIN, abs=timedelta(seconds=0.5),
    )
    assert views[4] == views[1]
