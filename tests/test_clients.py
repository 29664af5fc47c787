"""Clients through the API in process: keys, own jobs only, request rates, backlog caps, and the client CLI."""

import hashlib
import os
import subprocess
import sys
import uuid

import dramatiq
import falcon.testing
import pytest

from devtools.stack import wait_until
from queueing.messages import QUEUE_NAME
from queueing.ratelimit import vendor_key
from service.app import create_app
from service.store import PUBLIC_CLIENT
from tests.conftest import with_registry
from tests.test_list_and_cancel import REGISTRY

BODY = {"name": "testUser", "email": "test@mail.com", "password": "pw"}


@pytest.fixture
def api(config, tmp_path, clients):
    return falcon.testing.TestClient(create_app(with_registry(config, tmp_path, REGISTRY, auth="keys")))


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def submit(api, key, headers=(), **kwargs):
    return api.simulate_post("/jobs", json=BODY, headers={**bearer(key), **dict(headers)}, **kwargs)


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="no-key"),
    pytest.param({"Authorization": "Bearer vf_not-a-key-we-made"}, id="unknown-key"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="not-bearer"),
])
def test_a_request_without_a_valid_key_is_401_with_a_bearer_challenge_under_auth_keys(api, headers):
    for response in (api.simulate_post("/jobs", json=BODY, headers=headers), api.simulate_get("/jobs", headers=headers)):
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json["title"] == "API key required" and "key" in response.json["description"]


def test_a_key_is_shown_once_and_stored_only_as_its_digest_and_prefix(clients, api):
    client, key = clients.add("acme")
    assert key.startswith("vf_") and len(key) > 40
    [record] = clients.keys.find({"client": "acme"})
    assert record["_id"] == hashlib.sha256(key.encode()).hexdigest() and record["prefix"] == key[:11]
    assert key not in str(list(clients.keys.find())) + str(list(clients.clients.find()))
    assert submit(api, key).status_code == 202


def test_a_clients_callback_secret_is_stored_encrypted_and_read_back_to_sign(clients):
    client, _ = clients.add("signer")
    rotated = clients.rotate_callback_secret("signer")
    assert client.callback_secret.startswith("whsec_") and rotated.startswith("whsec_") and rotated != client.callback_secret
    stored = str(list(clients.clients.find({"_id": "signer"})))
    assert client.callback_secret not in stored and rotated not in stored and "whsec_" not in stored
    assert clients.callback_secret("signer") == rotated == clients.get("signer").callback_secret


def test_a_revoked_key_is_refused_within_the_cache_time(clients, api):
    _, key = clients.add("acme")
    assert submit(api, key).status_code == 202
    clients.revoke(key[:11])
    wait_until(lambda: submit(api, key).status_code == 401, 15, "the revoked key to be refused", interval_s=0.5)


def test_rotating_gives_a_new_key_and_revokes_the_old(clients, api):
    _, old = clients.add("acme")
    new = clients.rotate("acme")
    assert submit(api, new).status_code == 202 and submit(api, old).status_code == 401
    assert [key.get("revoked_at") is not None for key in clients.keys_of("acme")] == [False, True]


def test_every_job_names_its_client_in_the_store(clients, api, store, redis_client):
    _, key = clients.add("ann")
    request_id = submit(api, key, params={"vendor": "sync"}).json["request_id"]
    assert store.get(request_id)["client"] == "ann"
    [(_, fields)] = redis_client.xrange(QUEUE_NAME)
    message = dramatiq.Message.decode(fields[b"message"])
    assert message.args == (request_id,) and message.options == {"vendor": "sync"}


def test_a_client_sees_and_cancels_only_its_own_jobs(clients, api):
    _, ann = clients.add("ann")
    _, bob = clients.add("bob")
    request_id = submit(api, ann).json["request_id"]
    assert api.simulate_get(f"/jobs/{request_id}", headers=bearer(ann)).status_code == 200
    for response in (api.simulate_get(f"/jobs/{request_id}", headers=bearer(bob)),
                     api.simulate_post(f"/jobs/{request_id}/cancel", headers=bearer(bob))):
        assert response.status_code == 404 and response.json["title"] == "Job not found"
        assert response.headers["RateLimit-Policy"] == '"requests";q=50;w=1'  # errors count against the rate too
    assert api.simulate_get(f"/jobs/{request_id}", headers=bearer(ann)).json["status"] == "queued"
    assert api.simulate_get("/jobs", headers=bearer(bob)).json["data"] == []


def test_idempotency_keys_are_each_clients_own(clients, api, store):
    _, ann = clients.add("ann")
    _, bob = clients.add("bob")
    same = {"Idempotency-Key": "order-1"}
    first = submit(api, ann, headers=same).json["request_id"]
    assert submit(api, ann, headers=same).json["request_id"] == first
    other = submit(api, bob, headers=same).json["request_id"]
    assert other != first and store.get(other)["client"] == "bob" and store.get(first)["client"] == "ann"


def test_a_client_over_its_rate_gets_429_with_ratelimit_headers_while_another_is_served(clients, api):
    _, hasty = clients.add("hasty", rate_per_s=5)
    _, calm = clients.add("calm")
    answers = [api.simulate_get("/jobs", headers=bearer(hasty)) for _ in range(12)]
    served, refused = [a for a in answers if a.status_code == 200], [a for a in answers if a.status_code == 429]
    # However slowly they go, twelve requests straddle at most two one-second windows... unless the
    # machine is very slow; the first five are served and the first refusal comes after them.
    assert [a.status_code for a in answers[:5]] == [200] * 5 and refused
    assert served[0].headers["RateLimit-Policy"] == '"requests";q=5;w=1'
    assert served[0].headers["RateLimit"].startswith('"requests";r=4;t=')
    assert refused[0].headers["RateLimit"].startswith('"requests";r=0;t=')
    assert refused[0].headers["Retry-After"] == "1"
    assert refused[0].json["title"] == "Too many requests" and "5 requests a second" in refused[0].json["description"]
    assert api.simulate_get("/jobs", headers=bearer(calm)).status_code == 200


def places_waiting(redis_client, client_name, vendor_name):
    """Count the client's jobs waiting in the vendor's line."""
    return int(redis_client.hget(vendor_key(vendor_name, "fair:clients"), client_name) or 0)


def test_a_backlog_cap_refuses_that_client_only_and_a_cancel_frees_its_place(clients, api, redis_client):
    _, capped = clients.add("capped", backlog_caps={"slow": 2})
    _, free = clients.add("free")
    # One a minute: the first starts now, the next two wait in line.
    kept = [submit(api, capped, params={"vendor": "slow"}) for _ in range(3)]
    assert [r.status_code for r in kept] == [202, 202, 202]
    refused = submit(api, capped, params={"vendor": "slow"})
    assert refused.status_code == 429 and refused.json["title"] == "Your backlog is full"
    assert 55 <= int(refused.headers["Retry-After"]) <= 61 and "2 jobs waiting" in refused.json["description"]
    assert all(submit(api, free, params={"vendor": "slow"}).status_code == 202 for _ in range(3))
    assert places_waiting(redis_client, "capped", "slow") == 2
    assert api.simulate_post(f"/jobs/{kept[1].json['request_id']}/cancel", headers=bearer(capped)).status_code == 200
    assert places_waiting(redis_client, "capped", "slow") == 1
    assert submit(api, capped, params={"vendor": "slow"}).status_code == 202


def test_open_access_takes_a_caller_without_a_key_as_public_and_still_checks_a_given_key(config, clients, store):
    api = falcon.testing.TestClient(create_app(config))
    request_id = api.simulate_post("/jobs", json=BODY).json["request_id"]
    assert store.get(request_id)["client"] == PUBLIC_CLIENT
    # `public` stands for every caller without a key: no request limit of its own.
    answers = [api.simulate_get("/jobs") for _ in range(60)]
    assert all(a.status_code == 200 and "RateLimit" not in a.headers for a in answers)
    assert api.simulate_post("/jobs", json=BODY, headers=bearer("vf_wrong")).status_code == 401
    _, key = clients.add("acme")
    assert api.simulate_get(f"/jobs/{request_id}", headers=bearer(key)).status_code == 404


def test_the_client_cli_adds_lists_rotates_and_revokes(config, clients):
    env = {**os.environ, "ENCRYPTION_KEY": config.encryption_key, "MONGODB_URI": config.mongodb_uri}

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "service.clients", *args], env=env, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    code, out = cli("add", "acme", "--weight", "3", "--rate", "20", "--backlog-cap", "sync=100")
    assert code == 0 and "weight 3, 20 requests/s" in out
    key = out.split("API key (shown once): ")[1].split()[0]
    assert clients.by_key(key).backlog_caps == {"sync": 100} and "whsec_" in out
    assert cli("add", "acme")[0] != 0
    code, out = cli("list")
    assert code == 0 and "acme\tweight 3" in out and key[:11] in out and key not in out
    code, out = cli("rotate", "acme")
    new_key = out.split(": ")[-1].strip()
    assert code == 0 and clients.by_key(key) is None and clients.by_key(new_key).name == "acme"
    code, out = cli("revoke", new_key[:11])
    assert code == 0 and clients.by_key(new_key) is None
    code, out = cli("rotate", "acme", "--callback-secret")
    assert code == 0 and clients.callback_secret("acme") == out.split(": ")[-1].strip()
    assert cli("revoke", "vf_nothing")[1].startswith("error: no active key")


def test_the_migration_gives_jobs_from_before_clients_to_public(store, clients):
    request_id = str(uuid.uuid4())
    store.create(request_id, "sync", {"name": "n"})
    store.collection.update_one({"_id": request_id}, {"$unset": {"client": ""}})
    store.migrate()
    assert store.get(request_id)["client"] == PUBLIC_CLIENT
    assert clients.get(PUBLIC_CLIENT).weight == 1
