"""Client callbacks reach only what the egress policy allows, end at their deadline and read a capped answer.

No test here sends a packet off this machine: addresses outside 127.0.0.0/8 are only ever
checked, never connected to, and delivery-time refusals use loopback names and addresses the
allow-list leaves out.
"""

import dataclasses
import ipaddress
import time
import uuid

import falcon.testing
import pytest

from actors.callback_http import CallbackUnreachable, post_callback
from actors.callbacks import deliver
from devtools.stack import CallbackReceiver
from service.app import create_app
from service.clients.store import ClientStore
from service.egress import EgressPolicy, EgressRefused, parse_networks
from tests.hostile_endpoints import HostileEndpoint, flood, trickle
from tests.signing import new_secret

SECRET = new_secret("client callbacks")
ONLY_127_0_0_1 = EgressPolicy(parse_networks("127.0.0.1/32"))
REFUSED = [
    "127.0.0.1", "127.0.0.2", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.100.100.200",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fd00::1", "fd00:ec2::254", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1", "2002:7f00:1::1", "2001:0:7f00:1::1", "fec0::1", "3fff::1", "2001:db8::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_no_private_loopback_link_local_or_special_address_is_reachable_by_default(address):
    assert EgressPolicy().refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", [
    "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34", "64:ff9b::5db8:d822",  # NAT64 of a public one
])
def test_a_public_address_is_reachable(address):
    assert EgressPolicy().refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_opens_exactly_its_networks():
    assert ONLY_127_0_0_1.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert ONLY_127_0_0_1.refusal(ipaddress.ip_address("127.0.0.2")) is not None


@pytest.fixture
def client(config):
    allowing = dataclasses.replace(config, callback_secret=SECRET, callback_allow_networks=parse_networks("127.0.0.1/32"))
    return falcon.testing.TestClient(create_app(allowing))


@pytest.mark.parametrize("url", [
    "http://127.0.0.2/hook", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[::1]:6001/",
    "http://2130706434/", "http://0x7f000002/", "http://[::ffff:169.254.169.254]/", "http://100.64.0.1/", "http://[fd00::1]/",
])
def test_a_callback_url_written_as_an_unreachable_address_is_refused_at_submission(client, url):
    response = client.simulate_post("/jobs", json={"name": "Ann"}, params={"callback_url": url})
    assert response.status_code == 400 and response.json["title"] == "Callback address refused"
    assert "is not a public address" in response.json["description"]


@pytest.mark.parametrize("url", [
    "http://client.example:99999/hook", "http://client.example/h\u00e9", "http://" + "a" * 64 + ".example/", "ftp://client.example/",
    "http://client.example:0/", "https:///no-host",
])
def test_a_callback_url_no_request_could_be_sent_to_is_refused_at_submission(client, url):
    response = client.simulate_post("/jobs", json={"name": "Ann"}, params={"callback_url": url})
    assert response.status_code == 400 and response.json["title"] == "Invalid callback_url"


def test_an_allowed_address_and_a_name_are_taken_at_submission(client):
    for url in ("http://127.0.0.1:9/hook", "https://client.example/hook"):
        assert client.simulate_post("/jobs", json={"name": "Ann"}, params={"callback_url": url}).status_code == 202


def finished_job(store, callback_url):
    request_id = str(uuid.uuid4())
    store.create(request_id, "sync", {"name": "n"}, callback_url=callback_url)
    store.claim(request_id, "m1")
    store.fail(request_id, "m1", "vendor rejected")
    return request_id


@pytest.mark.parametrize("url", ["http://localhost:9/hook", "http://127.0.0.2:9/hook"])
def test_a_callback_that_resolves_outside_the_allow_list_is_refused_at_delivery_recorded_and_not_retried(store, url):
    request_id = finished_job(store, url)
    deliver(store, ONLY_127_0_0_1 if "127.0.0.2" in url else EgressPolicy(), ClientStore(store.collection.database, store.cipher), SECRET, request_id)
    job = store.get(request_id)
    assert "callback_delivered_at" not in job
    assert "client callback refused" in job["history"][-1]["event"] and "is not a public address" in job["history"][-1]["event"]


def test_a_delivery_ends_at_its_deadline_however_slowly_the_endpoint_trickles():
    endpoint = HostileEndpoint(trickle)
    try:
        started = time.monotonic()
        with pytest.raises(CallbackUnreachable, match="within the deadline"):
            post_callback(endpoint.url, b"{}", {}, ONLY_127_0_0_1, deadline_s=1, max_body_bytes=65536)
        assert time.monotonic() - started < 5  # the deadline plus a loaded machine's slack, not the trickle's hour
    finally:
        endpoint.close()


def test_a_delivery_to_a_silent_tls_endpoint_ends_at_its_deadline():
    endpoint = HostileEndpoint(lambda endpoint, connection: endpoint.closed.wait(30))  # takes the hello, answers nothing
    try:
        started = time.monotonic()
        with pytest.raises(CallbackUnreachable):
            post_callback(endpoint.url.replace("http://", "https://"), b"{}", {}, ONLY_127_0_0_1, deadline_s=1, max_body_bytes=65536)
        assert time.monotonic() - started < 5
    finally:
        endpoint.close()


def test_a_delivery_reads_a_capped_answer_from_an_endless_one():
    endpoint = HostileEndpoint(flood)
    try:
        answer = post_callback(endpoint.url, b"{}", {}, ONLY_127_0_0_1, deadline_s=10, max_body_bytes=65536)
        assert answer.status == 200
    finally:
        endpoint.close()
    assert endpoint.sent_bytes < 64 * 1024 * 1024  # it stopped reading; the rest sat in socket buffers or never left


def test_a_redirect_is_an_answer_not_a_hop():
    target = CallbackReceiver()
    redirecting = HostileEndpoint(lambda endpoint, connection: endpoint.send(
        connection, f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target.url}\r\nContent-Length: 0\r\n\r\n".encode(),
    ))
    try:
        assert post_callback(redirecting.url, b"{}", {}, ONLY_127_0_0_1, 10, 65536).status == 307
    finally:
        redirecting.close()
        target.close()
    assert target.calls == []


def test_a_refused_address_is_never_connected_to():
    endpoint = HostileEndpoint(trickle)
    try:
        with pytest.raises(EgressRefused):
            post_callback(endpoint.url, b"{}", {}, EgressPolicy(), 10, 65536)
    finally:
        endpoint.close()
    assert endpoint.connections == 0
