"""A client's list of its jobs and its cancels, through the API in process against the real stores."""

import threading
from datetime import timedelta

import dramatiq
import falcon.testing
import pytest

from actors.callbacks import deliver
from devtools.stack import CallbackReceiver
from queueing.ratelimit import vendor_key
from service.app import create_app
from service.egress import EgressPolicy, parse_networks
from service.store import utcnow
from tests.conftest import queued_messages, with_registry
from tests.signing import new_secret

CALLBACK_SECRET = new_secret("list-and-cancel callbacks")
REGISTRY = """
[vendors.sync]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "100000/minute"
max_backlog = 100000

[vendors.async]
mode = "async"
url = "http://127.0.0.1:9/fetch"
rate_limit = "100000/minute"
max_backlog = 100000
webhook_auth = "none"

[vendors.slow]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "1/minute"

[vendors.leased]
mode = "sync"
url = "http://127.0.0.1:9/fetch"
rate_limit = "100000/minute"
max_in_flight = 1
"""


@pytest.fixture
def api(config, tmp_path, clients):
    return falcon.testing.TestClient(create_app(with_registry(
        config, tmp_path, REGISTRY, auth="keys", callback_secret=CALLBACK_SECRET,
        callback_allow_networks=parse_networks("127.0.0.1/32"),
    )))


@pytest.fixture
def key(clients):
    return {"Authorization": f"Bearer {clients.add('lister', rate_per_s=100_000)[1]}"}


def submit(api, key, vendor="sync", **params):
    response = api.simulate_post("/jobs", json={"name": "Ann", "password": "pw"}, headers=key, params={"vendor": vendor, **params})
    assert response.status_code == 202, response.text
    return response.json["request_id"]


def every_page(api, key, **params):
    """Follow the cursor to the end; return the request_ids seen, page by page."""
    pages, cursor = [], None
    while True:
        page = api.simulate_get("/jobs", headers=key, params={**params, **({"starting_after": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        pages.append([job["request_id"] for job in page.json["data"]])
        assert all("payload" not in job and "history" not in job for job in page.json["data"])
        if not page.json["has_more"]:
            assert page.json["next_cursor"] is None
            return pages
        cursor = page.json["next_cursor"]


def test_paging_over_250_jobs_with_filters_is_complete_and_stable_while_new_jobs_arrive(api, key, store, clients):
    ids = [submit(api, key, vendor="sync" if i % 3 else "async") for i in range(250)]
    cancelled = set(ids[::5])
    for request_id in cancelled:
        assert api.simulate_post(f"/jobs/{request_id}/cancel", headers=key).status_code == 200
    submit(api, {"Authorization": f"Bearer {clients.add('someone-else')[1]}"})  # another client's: never listed
    arriving = threading.Event()

    def keep_submitting():
        while not arriving.is_set():
            submit(api, key)

    newcomer = threading.Thread(target=keep_submitting)
    newcomer.start()
    try:
        pages = every_page(api, key, limit="7")
        sync_cancelled = every_page(api, key, status="cancelled", vendor="sync", limit="3")
        middle = store.get(ids[100])["created_at"]
        older = every_page(api, key, created_before=middle.isoformat(), limit="100")
    finally:
        arriving.set()
        newcomer.join()
    seen = [request_id for page in pages for request_id in page]
    assert len(seen) == len(set(seen)) and set(ids) <= set(seen)  # every job once; newcomers only before them
    assert [i for i in seen if i in set(ids)] == ids[::-1]  # newest first
    assert all(len(page) <= 7 for page in pages)
    expected = [i for i in ids[::-1] if i in cancelled and store.get(i)["vendor"] == "sync"]
    assert [i for page in sync_cancelled for i in page] == expected and len(expected) > 10
    assert [i for page in older for i in page] == [i for i in ids[::-1] if store.get(i)["created_at"] < middle]
    assert len(older) >= 1 and sum(map(len, older)) >= 90


def test_the_list_is_read_from_the_client_created_at_index(api, key, store):
    for _ in range(5):
        submit(api, key)
    query = {"client": "lister", "created_at": {"$lt": utcnow(), "$gt": utcnow() - timedelta(hours=1)}}
    plan = store.collection.find(query).sort([("created_at", -1), ("_id", -1)]).explain()
    stages = str(plan["queryPlanner"]["winningPlan"])
    assert "IXSCAN" in stages and "client_created_at" in stages and "COLLSCAN" not in stages
    assert plan["executionStats"]["totalDocsExamined"] == 5


def test_a_page_reads_the_jobs_since_the_last_page_not_all_of_the_clients(store, monkeypatch):
    now = utcnow()
    jobs = [{**store.new_job(f"heavy-{n:05}", {"n": n}, client="heavy"), "vendor": "sync", "created_at": now - timedelta(seconds=3 * n)}
            for n in range(3000)]  # one every 3 s over two and a half hours, newest first
    for start in range(0, len(jobs), 500):
        store.insert_many(jobs[start:start + 500])
    queries, find = [], store.collection.find
    monkeypatch.setattr(store.collection, "find", lambda query, *rest: queries.append(query) or find(query, *rest))

    def examined(page_queries):
        order = [("created_at", -1), ("_id", -1)]
        return sum(find(query).sort(order).explain()["executionStats"]["totalDocsExamined"] for query in page_queries)

    first, position = store.client_jobs("heavy", limit=20)
    assert [job["_id"] for job in first] == [f"heavy-{n:05}" for n in range(20)] and position is not None
    assert examined(queries) <= 100  # the last minute's and the next two minutes' jobs, of 3,000
    cursor = find({"_id": "heavy-01999"}).next()  # as a page gives it: the time as stored
    queries.clear()
    deep, _ = store.client_jobs("heavy", starting_after=(cursor["created_at"], cursor["_id"]), limit=20)
    assert [job["_id"] for job in deep] == [f"heavy-{n:05}" for n in range(2000, 2020)]
    assert examined(queries) <= 100


@pytest.mark.parametrize("params, name", [
    pytest.param({"limit": "0"}, "limit", id="limit-0"),
    pytest.param({"limit": "101"}, "limit", id="limit-101"),
    pytest.param({"limit": "ten"}, "limit", id="limit-text"),
    pytest.param({"limit": "²"}, "limit", id="limit-superscript-digit"),
    pytest.param({"created_after": "0001-01-01T00:00:00+01:00"}, "created_after", id="before-the-calendar-in-utc"),
    pytest.param({"created_before": "9999-12-31T23:59:59-01:00"}, "created_before", id="past-the-calendar-in-utc"),
    pytest.param({"status": "done"}, "status", id="unknown-status"),
    pytest.param({"vendor": "acme"}, "vendor", id="unknown-vendor"),
    pytest.param({"created_after": "yesterday"}, "created_after", id="bad-time"),
    pytest.param({"created_before": "2026-13-01"}, "created_before", id="bad-date"),
    pytest.param({"starting_after": "not-a-cursor"}, "starting_after", id="bad-cursor"),
    pytest.param({"starting_after": "WzEsMl0"}, "starting_after", id="cursor-of-wrong-types"),
    pytest.param({"starting_after": "WzI1MzQwMjMwMDc5OTAwMCwieCJd"}, "starting_after", id="cursor-at-the-calendars-end"),
    pytest.param({"sort": "asc"}, "sort", id="unknown-parameter"),
])
def test_bad_list_parameters_are_400_naming_the_parameter(api, key, params, name):
    response = api.simulate_get("/jobs", headers=key, params=params)
    assert response.status_code == 400 and response.json["title"] == f"Invalid {name}"


@pytest.mark.parametrize("params", [
    pytest.param({"created_before": "0001-01-02T00:00:00Z"}, id="created-before-year-1"),
    pytest.param({"created_after": "9999-12-30T00:00:00Z"}, id="created-after-year-9999"),
    pytest.param({"created_before": "9999-12-31T23:59:59Z"}, id="created-before-the-calendars-end"),
])
def test_times_at_the_edges_of_the_calendar_list_what_they_hold(api, key, params):
    submit(api, key)
    response = api.simulate_get("/jobs", headers=key, params=params)
    assert response.status_code == 200
    assert len(response.json["data"]) == (1 if params.get("created_before", "").startswith("9999") else 0)


def job_in(api, key, store, status, vendor="sync"):
    """Submit a job and bring it to `status` as a worker would."""
    request_id = submit(api, key, vendor=vendor)
    if status == "pending":
        store.leave_pending(request_id, "enqueue failed")
    if status in ("processing", "awaiting_webhook", "complete"):
        store.claim(request_id, "m1")
    if status == "awaiting_webhook":
        store.await_webhook(request_id, utcnow() + timedelta(minutes=5), detail="accepted", attempt=1)
    if status == "complete":
        store.complete(request_id, {"account": "xyz"}, [], detail="done", attempt=1)
    return request_id


@pytest.mark.parametrize("status", ["pending", "queued", "processing", "awaiting_webhook"])
def test_cancel_ends_an_unfinished_job_at_once_erases_its_payload_and_repeats_the_same(api, key, store, status):
    request_id = job_in(api, key, store, status)
    first = api.simulate_post(f"/jobs/{request_id}/cancel", headers=key)
    assert first.status_code == 200 and first.json["status"] == "cancelled" and first.json["result"] is None
    again = api.simulate_post(f"/jobs/{request_id}/cancel", headers=key)
    assert again.status_code == 200 and again.json == first.json
    stored = store.collection.find_one({"_id": request_id})
    assert "payload" not in stored and stored["history"][-1]["state"] == "cancelled"
    assert store.claim(request_id, "m2") is None  # a worker's claim is refused


def test_cancelling_a_job_in_line_gives_its_place_back(api, key, store, redis_client):
    _, second, third = (submit(api, key, vendor="slow") for _ in range(3))  # the first starts now, the others wait in line
    line = vendor_key("slow", "fair")
    assert redis_client.zscore(line, second) is not None and redis_client.zscore(line, third) is not None
    api.simulate_post(f"/jobs/{second}/cancel", headers=key)
    assert redis_client.zscore(line, second) is None and redis_client.zscore(line, third) is not None


def test_cancelling_a_dispatched_job_passes_its_lease_to_the_next_in_line_at_once(api, key, redis_client):
    first, second = (submit(api, key, vendor="leased") for _ in range(2))  # the first holds the only lease, the second waits
    assert set(queued_messages(redis_client)) == {first}
    assert api.simulate_post(f"/jobs/{first}/cancel", headers=key).status_code == 200
    # No worker runs here: the cancel itself sent the second job's message.
    assert set(queued_messages(redis_client)) == {first, second}
    assert redis_client.zscore(vendor_key("leased", "fair"), second) is None


def test_a_finished_job_cannot_be_cancelled(api, key, store):
    request_id = job_in(api, key, store, "complete")
    response = api.simulate_post(f"/jobs/{request_id}/cancel", headers=key)
    assert response.status_code == 409 and "complete already" in response.json["description"]
    assert store.get(request_id)["status"] == "complete"


def test_a_call_in_flight_finishes_but_its_result_is_discarded(api, key, store):
    request_id = job_in(api, key, store, "processing")
    api.simulate_post(f"/jobs/{request_id}/cancel", headers=key)
    assert not store.complete(request_id, {"account": "late"}, [], detail="the call came back", attempt=1)
    assert store.get(request_id)["status"] == "cancelled" and store.get(request_id).get("result") is None


def test_a_webhook_after_a_cancel_is_acknowledged_and_ignored(api, key, store):
    request_id = job_in(api, key, store, "awaiting_webhook", vendor="async")
    api.simulate_post(f"/jobs/{request_id}/cancel", headers=key)
    response = api.simulate_post("/vendor-webhook/async", json={"request_id": request_id, "account": "xyz"})
    assert response.status_code == 200 and response.json == {"message": "Job cancelled; data discarded"}
    job = store.get(request_id)
    assert job["status"] == "cancelled" and job.get("result") is None
    assert "after the job was cancelled" in job["history"][-1]["event"]


def test_the_clients_callback_reports_cancelled_signed_with_the_clients_own_secret(api, store, clients, redis_client):
    import standardwebhooks

    client, key = clients.add("hooked")
    receiver = CallbackReceiver()
    try:
        request_id = api.simulate_post(
            "/jobs", json={"name": "Ann"}, headers={"Authorization": f"Bearer {key}"}, params={"callback_url": receiver.url},
        ).json["request_id"]
        api.simulate_post(f"/jobs/{request_id}/cancel", headers={"Authorization": f"Bearer {key}"})
        queued = [dramatiq.Message.decode(fields[b"message"]) for _, fields in redis_client.xrange("client-callbacks")]
        assert [message.args for message in queued] == [(request_id,)]
        deliver(store, EgressPolicy(parse_networks("127.0.0.1/32")), clients, CALLBACK_SECRET, request_id)
        [(headers, body)] = receiver.calls
        signed = standardwebhooks.Webhook(client.callback_secret).verify(body, {k.lower(): v for k, v in headers.items()})
        assert signed["status"] == "cancelled" and signed["request_id"] == request_id
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(CALLBACK_SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    finally:
        receiver.close()
