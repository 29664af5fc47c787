import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import falcon.testing
import orjson
import pytest

from service.app import create_app
from service.states import JobStatus
from service.store import utcnow
from service.webhooks import WebhookAuth
from tests.signing import new_secret, signed_headers

SECRET = new_secret("signed-vendor-secret")
OLD_SECRET = new_secret("rotated-out-secret")
REGISTRY = f"""
[vendors.signed]
mode = "async"
url = "http://127.0.0.1:9/fetch"
webhook_secret = ["{SECRET}", "{OLD_SECRET}"]

[vendors.tokened]
mode = "async"
url = "http://127.0.0.1:9/fetch"
"""


@pytest.fixture
def signed_config(config, tmp_path):
    registry = tmp_path / "vendors.toml"
    registry.write_text(REGISTRY)
    return replace(config, vendors_file=str(registry))


@pytest.fixture
def client(signed_config):
    return falcon.testing.TestClient(create_app(signed_config))


def awaiting_job(store, vendor):
    request_id = str(uuid.uuid4())
    store.create(request_id, vendor, {"name": "n"})
    store.claim(request_id, "m1")
    store.await_webhook(request_id, utcnow() + timedelta(minutes=5), detail="accepted", attempt=1)
    return request_id


def signed_call(client, body, secret=SECRET, msg_id=None, at=None):
    raw = orjson.dumps(body)
    return client.simulate_post("/vendor-webhook/signed", body=raw, headers=signed_headers(secret, raw, msg_id, at))


def test_a_signed_webhook_completes_the_job(client, store):
    request_id = awaiting_job(store, "signed")
    response = signed_call(client, {"request_id": request_id, "account": "xyz"})
    assert response.status_code == 200
    assert store.get(request_id)["result"] == {"account": "xyz"}


def test_a_secret_still_in_rotation_is_accepted(client, store):
    request_id = awaiting_job(store, "signed")
    assert signed_call(client, {"request_id": request_id, "account": "xyz"}, secret=OLD_SECRET).status_code == 200
    assert store.get(request_id)["status"] == "complete"


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), id="unsigned"),
    pytest.param(lambda h, b: (h, b.replace(b"xyz", b"abc")), id="tampered-body"),
    pytest.param(lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), id="wrong-signature"),
    pytest.param(lambda h, b: ({**h, "webhook-signature": "garbage"}, b), id="malformed-signature"),
])
def test_unsigned_or_tampered_webhooks_are_401_and_change_nothing(client, store, tamper):
    request_id = awaiting_job(store, "signed")
    raw = orjson.dumps({"request_id": request_id, "account": "xyz"})
    headers, raw = tamper(signed_headers(SECRET, raw), raw)
    response = client.simulate_post("/vendor-webhook/signed", body=raw, headers=headers)
    assert response.status_code == 401 and "signature" in response.json["description"]
    assert store.get(request_id)["status"] == "awaiting_webhook"


def test_a_stale_timestamp_is_401(client, store):
    request_id = awaiting_job(store, "signed")
    response = signed_call(client, {"request_id": request_id}, at=datetime.now(timezone.utc) - timedelta(minutes=6))
    assert response.status_code == 401 and "too old" in response.json["description"]
    assert store.get(request_id)["status"] == "awaiting_webhook"


def test_a_replayed_webhook_id_is_refused_without_effect(client, store):
    first, second = awaiting_job(store, "signed"), awaiting_job(store, "signed")
    assert signed_call(client, {"request_id": first, "account": "a"}, msg_id="msg_same").status_code == 200
    assert store.get(first)["result"] == {"account": "a"}
    replay = signed_call(client, {"request_id": second, "account": "b"}, msg_id="msg_same")
    assert replay.status_code == 409 and "replay refused" in replay.json["description"]
    assert store.get(second)["status"] == "awaiting_webhook"


def test_token_vendor_needs_the_token_of_that_job_and_vendor(client, store, signed_config, redis_client):
    request_id, other = awaiting_job(store, "tokened"), awaiting_job(store, "tokened")
    auth = WebhookAuth(signed_config.encryption_key, redis_client)
    body = {"request_id": request_id, "account": "xyz"}
    assert client.simulate_post("/vendor-webhook/tokened", json=body).status_code == 401
    wrong = auth.callback_token(other, "tokened")
    assert client.simulate_post("/vendor-webhook/tokened", json=body, params={"token": wrong}).status_code == 401
    assert store.get(request_id)["status"] == "awaiting_webhook"
    right = auth.callback_token(request_id, "tokened")
    assert client.simulate_post("/vendor-webhook/tokened", json=body, params={"token": right}).status_code == 200
    assert store.get(request_id)["status"] == "complete"


def test_a_delivery_that_failed_here_may_be_retried_with_the_same_id(client, store):
    request_id = str(uuid.uuid4())
    assert signed_call(client, {"request_id": request_id, "account": "a"}, msg_id="msg_retry").status_code == 404
    store.create(request_id, "signed", {"name": "n"})
    store.claim(request_id, "m1")
    assert signed_call(client, {"request_id": request_id, "account": "a"}, msg_id="msg_retry").status_code == 200
