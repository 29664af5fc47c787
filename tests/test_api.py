import uuid

import dramatiq
import falcon.testing
import pytest

from queueing.messages import QUEUE_NAME
from service.app import create_app
from tests.conftest import nested


@pytest.fixture
def client(config):
    return falcon.testing.TestClient(create_app(config))


@pytest.fixture
def jobs(store):
    return store.collection


def submit(client, body=None, **kwargs):
    return client.simulate_post("/jobs", json={"name": "testUser", "email": "test@mail.com", "password": "pw"} if body is None else body, **kwargs)


def test_submit_answers_202_with_a_request_id_and_location(client, jobs, redis_client):
    response = submit(client)
    assert response.status_code == 202
    request_id = response.json["request_id"]
    assert str(uuid.UUID(request_id, version=4)) == request_id
    assert response.headers["Location"] == f"/jobs/{request_id}"
    stored = jobs.find_one({"_id": request_id})
    assert stored["status"] == "queued" and stored["vendor"] in ("sync", "async")
    [(_, fields)] = redis_client.xrange(QUEUE_NAME)
    message = dramatiq.Message.decode(fields[b"message"])
    assert (message.actor_name, message.args) == ("fetch_job", (request_id,))


def test_any_json_object_is_accepted_and_never_returned(client):
    request_id = submit(client, {"anything": [1, 2], "secret": "s3cret"}).json["request_id"]
    body = client.simulate_get(f"/jobs/{request_id}").text
    assert "s3cret" not in body and "anything" not in body


def test_round_robin_spreads_jobs_and_vendor_can_be_pinned(client, jobs):
    ids = [submit(client).json["request_id"] for _ in range(4)]
    assert sorted(jobs.find_one({"_id": i})["vendor"] for i in ids) == ["async", "async", "sync", "sync"]
    pinned = submit(client, params={"vendor": "async"}).json["request_id"]
    assert jobs.find_one({"_id": pinned})["vendor"] == "async"


def test_get_shows_status_and_null_result_before_completion(client):
    request_id = submit(client).json["request_id"]
    response = client.simulate_get(f"/jobs/{request_id}")
    assert response.status_code == 200
    assert response.json["status"] == "queued" and response.json["result"] is None
    assert response.json["attempts"] == 0 and "created_at" in response.json


def test_original_webhook_example_completes_an_async_job(client, jobs):
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    jobs.update_one({"_id": request_id}, {"$set": {"status": "awaiting_webhook"}})
    response = client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "xyz", "balance": 5000})
    assert response.status_code == 200 and response.json == {"message": "Result saved"}
    job = client.simulate_get(f"/jobs/{request_id}").json
    assert job["status"] == "complete" and job["result"] == {"account": "xyz", "balance": 5000}
    assert jobs.find_one({"_id": request_id}).get("payload") is None


def test_duplicate_webhook_keeps_first_result(client, jobs):
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    jobs.update_one({"_id": request_id}, {"$set": {"status": "awaiting_webhook"}})
    client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "first"})
    second = client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "second"})
    assert second.status_code == 200 and second.json == {"message": "Result saved"}
    assert client.simulate_get(f"/jobs/{request_id}").json["result"] == {"account": "first"}


def test_webhook_for_another_vendors_job_is_refused_and_recorded(client, jobs):
    request_id = submit(client, params={"vendor": "sync"}).json["request_id"]
    response = client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "x"})
    assert response.status_code == 403 and "not sent to vendor 'async'" in response.json["description"]
    job = jobs.find_one({"_id": request_id})
    assert job["status"] == "queued" and "webhook refused" in job["history"][-1]["event"]


def test_webhook_after_a_job_failed_is_refused_with_409(client, jobs, store):
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    store.fail(request_id, "m1", "vendor rejected")
    response = client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "late"})
    assert response.status_code == 409
    assert jobs.find_one({"_id": request_id}).get("result") is None


@pytest.mark.parametrize("path, body, status, words", [
    pytest.param("/vendor-webhook/async", {"request_id": "nope", "a": 1}, 404, "no job has request_id", id="unknown-job"),
    pytest.param("/vendor-webhook/acme", {"request_id": "nope"}, 404, "no vendor is called 'acme'", id="unknown-vendor"),
    pytest.param("/vendor-webhook/async", {"account": "x"}, 400, "request_id", id="missing-request-id"),
    pytest.param("/vendor-webhook/async", {"request_id": 7}, 400, "request_id", id="non-string-request-id"),
])
def test_bad_webhooks_get_clear_errors(client, path, body, status, words):
    response = client.simulate_post(path, json=body)
    assert response.status_code == status
    assert words in response.json["description"]


@pytest.mark.parametrize("kwargs, status, words", [
    pytest.param({"body": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON", id="malformed"),
    pytest.param({"json": [1, 2]}, 400, "must be a JSON object, not a list", id="array"),
    pytest.param({"json": "text"}, 400, "not a str", id="string"),
    pytest.param({"body": "", "headers": {"Content-Type": "application/json"}}, 400, "must be a JSON object", id="empty"),
    pytest.param({"body": "a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "application/json", id="form"),
    pytest.param({"json": {"big": "x" * 70_000}}, 413, "limit is 65536 bytes", id="too-large"),
    pytest.param({"json": {}, "params": {"vendor": "acme"}}, 400, "no vendor is called 'acme'", id="unknown-vendor"),
    pytest.param({"body": "[" * 299 + "{}" + "]" * 299, "headers": {"Content-Type": "application/json"}}, 400,
                 "must be a JSON object", id="300-levels-of-lists"),
    pytest.param({"json": nested(300)}, 400, "at most 32 levels deep", id="300-levels"),
    pytest.param({"json": nested(33)}, 400, "at most 32 levels deep", id="33-levels"),
])
def test_bad_submissions_get_clear_4xx_errors(client, jobs, kwargs, status, words):
    response = client.simulate_post("/jobs", **kwargs)
    assert response.status_code == status
    assert words in response.json["description"]
    assert jobs.count_documents({}) == 0


def test_unknown_job_and_unknown_route_are_404_json(client):
    assert client.simulate_get(f"/jobs/{uuid.uuid4()}").json["title"] == "Job not found"
    response = client.simulate_get("/nowhere")
    assert response.status_code == 404 and "POST /jobs" in response.json["description"]


def test_mongodb_outage_answers_503_with_retry_after(config):
    from dataclasses import replace

    from devtools.stores import free_port

    down = replace(config, mongodb_uri=f"mongodb://127.0.0.1:{free_port()}/x?directConnection=true", store_timeout_ms=300)
    response = submit(falcon.testing.TestClient(create_app(down)))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5" and "MongoDB" in response.json["description"]


def test_redis_outage_still_stores_the_job_as_pending(config, mongo_client):
    from dataclasses import replace

    from devtools.stores import free_port

    down = replace(config, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    response = submit(falcon.testing.TestClient(create_app(down)))
    assert response.status_code == 202
    db = mongo_client.get_database(config.mongodb_uri.split("/")[-1].split("?")[0])
    assert db.jobs.find_one({"_id": response.json["request_id"]})["status"] == "pending"


def test_health_and_readiness_report_the_stores_the_open_access_and_the_unsigned_vendor(client):
    assert client.simulate_get("/healthz").json == {"status": "ok"}
    ready = client.simulate_get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"mongodb": "ok", "redis": "ok", "vendors": ["async", "sync"]}
    assert ready.json["warnings"] == [
        "AUTH=open: every request without an API key is taken as the client 'public'",
        "vendor 'async' accepts unauthenticated webhooks (webhook_auth = none)",
    ]


def test_readiness_is_503_when_a_store_is_down(config):
    from dataclasses import replace

    from devtools.stores import free_port

    down = replace(config, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    ready = falcon.testing.TestClient(create_app(down)).simulate_get("/readyz")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"].startswith("unavailable") and ready.json["checks"]["mongodb"] == "ok"


def test_the_same_idempotency_key_and_body_return_the_same_job(client, jobs):
    headers = {"Idempotency-Key": "order-42"}
    first = submit(client, {"name": "a", "b": 1}, headers=headers)
    again = submit(client, {"b": 1, "name": "a"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json == first.json and again.headers["Location"] == first.headers["Location"]
    assert jobs.count_documents({}) == 1


def test_the_same_idempotency_key_with_another_body_is_422(client, jobs):
    submit(client, {"name": "a"}, headers={"Idempotency-Key": "order-43"})
    response = submit(client, {"name": "b"}, headers={"Idempotency-Key": "order-43"})
    assert response.status_code == 422 and "order-43" in response.json["description"]
    assert jobs.count_documents({}) == 1


def test_different_idempotency_keys_make_different_jobs(client, jobs):
    submit(client, {"name": "a"}, headers={"Idempotency-Key": "k1"})
    submit(client, {"name": "a"}, headers={"Idempotency-Key": "k2"})
    submit(client, {"name": "a"})
    assert jobs.count_documents({}) == 3


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(client, jobs):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: submit(client, {"n": 1}, headers={"Idempotency-Key": "race"}), range(16)))
    # A repeat that overtakes the first request's insert is told to retry (409), never given another job.
    assert {response.status_code for response in responses} <= {202, 409}
    assert len({response.json["request_id"] for response in responses if response.status_code == 202}) == 1
    assert jobs.count_documents({}) == 1
    again = submit(client, {"n": 1}, headers={"Idempotency-Key": "race"})
    assert again.status_code == 202 and again.json["request_id"] == jobs.find_one()["_id"]


def test_a_callback_url_needs_callback_secret_configured(client):
    response = submit(client, params={"callback_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 400 and "CALLBACK_SECRET" in response.json["description"]


def metric(client, name, **labels):
    """Read one sample from /metrics (0 when the series does not exist yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.simulate_get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_submissions_webhooks_finished_jobs_and_queue_depth(client, jobs):
    submitted = metric(client, "vendorfetch_jobs_submitted_total", vendor="async")
    saved = metric(client, "vendorfetch_webhooks_total", vendor="async", outcome="saved")
    refused = metric(client, "vendorfetch_webhooks_total", vendor="async", outcome="WebhookWrongVendor")
    finished = metric(client, "vendorfetch_jobs_finished_total", vendor="async", status="complete")
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    other = submit(client, params={"vendor": "sync"}).json["request_id"]
    jobs.update_one({"_id": request_id}, {"$set": {"status": "awaiting_webhook"}})
    client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "x"})
    client.simulate_post("/vendor-webhook/async", json={"request_id": other, "account": "x"})
    assert metric(client, "vendorfetch_jobs_submitted_total", vendor="async") == submitted + 1
    assert metric(client, "vendorfetch_webhooks_total", vendor="async", outcome="saved") == saved + 1
    assert metric(client, "vendorfetch_webhooks_total", vendor="async", outcome="WebhookWrongVendor") == refused + 1
    assert metric(client, "vendorfetch_jobs_finished_total", vendor="async", status="complete") == finished + 1
    assert metric(client, "vendorfetch_queue_depth", queue="job-queue") == 2
    assert metric(client, "vendorfetch_http_requests_total", method="POST", route="/jobs", status="202") >= 2


def test_metrics_report_each_vendors_breaker(client, redis_client):
    from queueing.breaker import CircuitBreaker
    from vendors.registry import load_registry

    sync = load_registry().get("sync")
    assert "vendorfetch_breaker_open{vendor=\"sync\"} 0.0" in client.simulate_get("/metrics").text
    for _ in range(sync.breaker_failures):
        CircuitBreaker(redis_client).failed(sync)
    assert metric(client, "vendorfetch_breaker_open", vendor="sync") == 1
    assert metric(client, "vendorfetch_breaker_open", vendor="async") == 0


def test_an_idempotency_key_is_freed_when_its_job_cannot_be_stored(config, redis_client):
    from dataclasses import replace

    from devtools.stores import free_port

    down = replace(config, mongodb_uri=f"mongodb://127.0.0.1:{free_port()}/x?directConnection=true", store_timeout_ms=300)
    assert submit(falcon.testing.TestClient(create_app(down)), headers={"Idempotency-Key": "retry-me"}).status_code == 503
    assert redis_client.get("{client:public}:idempotency:retry-me") is None


def test_a_replay_before_the_first_job_is_stored_is_409(client, config, redis_client):
    from service.idempotency import IdempotencyKeys

    body = {"name": "a"}
    request = {"payload": body, "vendor": None, "callback_url": None}
    IdempotencyKeys(redis_client, config.encryption_key).claim("public", "early", request, "not-stored-yet")
    response = submit(client, body, headers={"Idempotency-Key": "early"})
    assert response.status_code == 409 and "still being stored" in response.json["description"]


def test_a_job_nested_32_levels_deep_is_taken(client, jobs):
    response = submit(client, nested(32))
    assert response.status_code == 202 and jobs.count_documents({}) == 1


def test_a_webhook_nested_too_deeply_is_400_and_changes_nothing(client, jobs):
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    response = client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "data": nested(300)})
    assert response.status_code == 400 and "at most 32 levels deep" in response.json["description"]
    assert jobs.find_one({"_id": request_id})["status"] == "queued"


def test_an_unexpected_error_is_a_json_500_whose_log_line_holds_no_query_string(client, monkeypatch, caplog):
    from service.jobs import Jobs

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Jobs, "receive_webhook", broken)
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    response = client.simulate_post("/vendor-webhook/async", params={"token": "the-jobs-token"}, json={"request_id": request_id})
    assert response.status_code == 500 and "the error is logged" in response.json["description"]
    [logged] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert logged.getMessage() == "unhandled error during POST /vendor-webhook/async" and logged.exc_info
    assert "the-jobs-token" not in caplog.text


def test_a_webhook_with_data_that_cannot_be_stored_is_422_and_changes_nothing(client, jobs):
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    jobs.update_one({"_id": request_id}, {"$set": {"status": "awaiting_webhook"}})
    response = client.simulate_post("/vendor-webhook/async", body=f'{{"request_id": "{request_id}", "n": {2**63 + 5}}}',
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "cannot be stored" in response.json["description"]
    assert jobs.find_one({"_id": request_id})["status"] == "awaiting_webhook"


def test_an_idempotency_record_gives_away_nothing_of_the_payload(client, redis_client):
    import hashlib

    import orjson

    submit(client, {"password": "hunter2"}, headers={"Idempotency-Key": "secret-check"})
    record = redis_client.get("{client:public}:idempotency:secret-check")
    plain = hashlib.sha256(orjson.dumps({"callback_url": None, "payload": {"password": "hunter2"}, "vendor": None},
                                        option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert b"hunter2" not in record and plain.encode() not in record


NESTED_PII = {"owner": {"accounts": [{"iban": "x", "Email": "a@b.c"}, {"iban": "y", "card-number": "4111"}]},
              "a": {"b": {"c": {"d": {"SSN": "1", "keep": 1}}}}}
NESTED_CLEAN = {"owner": {"accounts": [{"iban": "x"}, {"iban": "y"}]}, "a": {"b": {"c": {"d": {"keep": 1}}}}}


def test_a_webhook_loses_pii_at_any_depth_before_it_is_stored(client, jobs):
    request_id = submit(client, params={"vendor": "async"}).json["request_id"]
    assert client.simulate_post("/vendor-webhook/async", json={"request_id": request_id, **NESTED_PII}).status_code == 200
    stored = jobs.find_one({"_id": request_id})
    assert stored["result"] == NESTED_CLEAN and "a@b.c" not in repr(stored) and "4111" not in repr(stored)
    assert sorted(stored["removed_keys"]) == ["a.b.c.d.SSN", "owner.accounts[].Email", "owner.accounts[].card-number"]
