"""The runner's one retry policy, in process against a scripted vendor: attempts are counted where outcomes are recorded."""

import json
import uuid

import pytest
import requests

from actors.deferral import Deferred
from actors.feedback import VendorFeedback
from actors.runner import JobRunner
from queueing.breaker import CircuitBreaker
from queueing.ratelimit import RateLimiter
from service.cleaning import Cleaner
from service.config import DEFAULT_PII_KEYS
from service.outcomes import Outcomes
from service.webhooks import WebhookAuth
from tests.conftest import nested
from tests.test_api import NESTED_CLEAN, NESTED_PII
from tests.scripted_vendor import ScriptedVendor
from vendors.registry import parse_registry


@pytest.fixture
def vendor():
    scripted = ScriptedVendor()
    yield scripted
    scripted.close()


@pytest.fixture
def runner(config, store, redis_client, vendor):
    registry = parse_registry(
        {"vendors": {"scripted": {"mode": "sync", "url": vendor.url, "max_retries": 2, "max_body_bytes": 4096}}}, "test",
    )
    limiter = RateLimiter(redis_client, config.rate_limit_margin_ms)
    return JobRunner(
        store, Outcomes(store, None), registry, requests.Session(), WebhookAuth(config.encryption_key, redis_client),
        config.public_url, Cleaner(DEFAULT_PII_KEYS), VendorFeedback(limiter, CircuitBreaker(redis_client)),
    )


def new_job(store):
    request_id = str(uuid.uuid4())
    store.create(request_id, "scripted", {"name": "Ann", "password": "pw"})
    return request_id


def test_a_429_is_pushback_not_an_attempt(runner, store, vendor):
    request_id = new_job(store)
    vendor.answer = lambda _: (429, {"Retry-After": "1"})
    with pytest.raises(Deferred) as deferred:
        runner.run(request_id, "m1")
    assert deferred.value.cause == "vendor_pushback" and deferred.value.delay_ms == 1_000
    assert store.get(request_id)["attempts"] == 0
    vendor.answer = lambda _: (200, {})
    runner.run(request_id, "m1")
    job = store.get(request_id)
    assert job["status"] == "complete" and job["attempts"] == 1 and job["result"] == {"account": "xyz", "balance": 5000}


def test_failed_attempts_are_counted_as_recorded_and_the_job_fails_past_max_retries(runner, store, vendor):
    request_id = new_job(store)
    vendor.answer = lambda _: (503, {})
    for attempt in (1, 2):
        with pytest.raises(Deferred) as deferred:
            runner.run(request_id, "m1")  # the same message comes back after its backoff
        assert deferred.value.cause == "retry_backoff"
        assert store.get(request_id)["attempts"] == attempt
    runner.run(request_id, "m1")
    job = store.get(request_id)
    assert job["status"] == "failed" and job["attempts"] == 3
    assert job["error"] == "gave up after 3 attempts: scripted answered 503"
    assert len(vendor.calls) == 3


def test_a_job_whose_payload_was_erased_fails_without_calling_the_vendor(runner, store, vendor):
    request_id = new_job(store)
    store.collection.update_one({"_id": request_id}, {"$unset": {"payload": ""}})
    runner.run(request_id, "m1")
    job = store.get(request_id)
    assert job["status"] == "failed" and "payload was erased" in job["error"] and job["attempts"] == 0
    assert vendor.calls == []


def test_a_vendor_redirect_is_not_followed_and_fails_the_job_at_once(runner, store, vendor):
    elsewhere = ScriptedVendor()  # must receive nothing, the decrypted payload least of all
    try:
        request_id = new_job(store)
        vendor.answer = lambda _: (307, {"Location": elsewhere.url})
        runner.run(request_id, "m1")
        assert elsewhere.calls == []
    finally:
        elsewhere.close()
    job = store.get(request_id)
    assert job["status"] == "failed" and job["error"] == "scripted answered 307; redirects are not followed"
    assert len(vendor.calls) == 1


@pytest.mark.parametrize("body, reason", [
    pytest.param(json.dumps(nested(150)).encode(), "scripted answered JSON nested deeper than 32 levels", id="150-levels"),
    pytest.param(json.dumps({"blob": "x" * 5000}).encode(), "scripted answered more than 4096 bytes", id="over-max-body-bytes"),
])
def test_an_answer_the_service_cannot_keep_fails_the_job_after_one_call(runner, store, vendor, body, reason):
    request_id = new_job(store)
    vendor.answer = lambda _: (200, {}, body)
    runner.run(request_id, "m1")
    job = store.get(request_id)
    assert job["status"] == "failed" and job["error"] == reason and job["attempts"] == 1
    assert len(vendor.calls) == 1


def test_a_sync_answer_loses_pii_at_any_depth_before_it_is_stored(runner, store, vendor):
    request_id = new_job(store)
    vendor.answer = lambda _: (200, {}, json.dumps({"request_id": request_id, **NESTED_PII}).encode())
    runner.run(request_id, "m1")
    stored = store.collection.find_one({"_id": request_id})
    assert stored["status"] == "complete" and stored["result"] == NESTED_CLEAN
    assert "a@b.c" not in repr(stored) and "4111" not in repr(stored)


def test_a_job_cancelled_while_queued_is_never_sent_to_its_vendor(runner, store, vendor):
    request_id = new_job(store)
    assert store.cancel_waiting(request_id, "cancelled by its client")
    runner.run(request_id, "m1")  # its message came due all the same: the claim is refused
    assert vendor.calls == [] and store.get(request_id)["status"] == "cancelled"
