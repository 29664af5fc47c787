"""The limiter, the breaker, the clock's lease and the whole service on a Valkey cluster of 3 primaries + 3 replicas."""

import pytest
import redis
import requests

from devtools.stack import Stack, free_ports, service_env, vendors_toml, wait_until
from queueing.breaker import CircuitBreaker
from queueing.keys import dead_key, delay_key, stream_key
from queueing.lease import LEADER_KEY, SWEEPS_KEY, LeaderLease, read_clock
from queueing.messages import CALLBACK_QUEUE, QUEUE_NAME
from queueing.ratelimit import NewJob, RateLimiter, vendor_key
from service.clients.limits import RequestLimits
from service.clients.store import Client
from tests.conftest import flushed, with_database
from vendors.registry import Vendor

pytestmark = pytest.mark.cluster

VENDORS = ("sync", "async", "acme", "globex")


def vendor(name: str, **settings) -> Vendor:
    return Vendor(name=name, mode="sync", url=f"http://{name}/fetch", **settings)


@pytest.fixture
def cluster_client(valkey_cluster):
    yield from flushed(redis.RedisCluster.from_url(valkey_cluster.url))


def primary_port(client: redis.RedisCluster, key: str) -> int:
    return client.get_node_from_key(key).port


def test_a_queues_keys_share_one_slot_and_queues_and_vendors_spread_over_the_primaries(cluster_client):
    for queue in (QUEUE_NAME, CALLBACK_QUEUE):
        assert len({cluster_client.keyslot(key) for key in (stream_key(queue), delay_key(queue), dead_key(queue))}) == 1
    assert cluster_client.keyslot(LEADER_KEY) == cluster_client.keyslot(SWEEPS_KEY)
    assert primary_port(cluster_client, QUEUE_NAME) != primary_port(cluster_client, CALLBACK_QUEUE)
    assert len({primary_port(cluster_client, vendor_key(name, "slots")) for name in VENDORS}) >= 2


def test_the_limiter_admits_jobs_of_vendors_on_different_primaries_in_one_round_trip_and_holds_each_backlog(cluster_client):
    limiter = RateLimiter(cluster_client, 100)
    vendors = [vendor(name, rate_limit="1/second", max_backlog=2) for name in VENDORS]
    cluster_client.script_flush()  # what a restarted or newly promoted node lacks

    admissions = limiter.admit_many([NewJob(each, f"{each.name}-{n}") for n in range(4) for each in vendors])

    accepted = {each.name: [a.accepted for (v, _), a in zip([(v, n) for n in range(4) for v in vendors], admissions) if v is each]
                for each in vendors}
    # The first starts at once, two wait in line, the fourth finds the backlog full.
    assert accepted == {name: [True, True, True, False] for name in VENDORS}
    limiter.withdraw(vendors[0], "sync-1")
    assert limiter.admit(NewJob(vendors[0], "sync-again")).accepted


def test_acquire_starts_one_job_per_slot_and_dispatches_the_next_in_line_on_every_primary(cluster_client):
    limiter = RateLimiter(cluster_client, 100)
    for each in (vendor(name, rate_limit="1/second") for name in VENDORS):
        admissions = limiter.admit_many([NewJob(each, f"{each.name}-{n}") for n in range(2)])
        assert [a.dispatched for a in admissions] == [True, False]
        grant = limiter.acquire(each, f"{each.name}-0")
        assert grant.wait_ms == 0 and [job.request_id for job in grant.dispatched] == [f"{each.name}-1"]
        assert limiter.acquire(each, f"{each.name}-1").wait_ms > 0


def test_the_breaker_opens_on_the_node_that_holds_it(cluster_client):
    breaker = CircuitBreaker(cluster_client)
    flaky = vendor("globex", breaker_failures=2, breaker_cooldown_s=30)
    breaker.failed(flaky)
    assert breaker.state(flaky) == ("closed", 1)
    breaker.failed(flaky)
    grant = RateLimiter(cluster_client, 100).acquire(flaky, "globex-0", breaker.check_args(flaky))
    assert breaker.state(flaky) == ("open", 2) and grant.by_breaker and grant.wait_ms > 0


def test_client_request_counts_are_kept_on_the_nodes_that_hold_them(cluster_client):
    cluster_client.script_flush()
    clients = [Client(f"client-{n}", rate_per_s=2) for n in range(4)]
    counts = RequestLimits(cluster_client)._count_many([c.name for c in clients] * 2)
    assert [count for count, _ in counts] == [1] * 4 + [2] * 4


def test_one_clock_leads_and_its_record_reads_back(cluster_client):
    lease, standby = LeaderLease(cluster_client, 5.0, "a"), LeaderLease(cluster_client, 5.0, "b")
    assert lease.try_lead() and not standby.try_lead()
    assert read_clock(cluster_client).leader == "a"
    lease.stop()
    assert standby.try_lead() and read_clock(cluster_client).leader == "b"


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory, valkey_cluster, mongodb_uri, mongo_client):
    folder = tmp_path_factory.mktemp("cluster-e2e")
    api_port, sync_port, async_port = free_ports(3)
    registry = folder / "vendors.toml"
    registry.write_text(vendors_toml(sync_port, async_port))
    env = service_env(valkey_cluster.url, with_database(mongodb_uri, "cluster_e2e"), registry, api_port)
    stack = Stack({**env, "REDIS_CLUSTER": "true"}, folder)
    try:
        stack.start_mock("sync", sync_port)
        stack.start_mock("async", async_port, "--callback-delay-s", "0.2")
        stack.start_api(api_port)
        stack.start_worker(threads=4)
        stack.start_clock()
        stack.url = f"http://127.0.0.1:{api_port}"
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database("cluster_e2e")


def test_sync_and_async_jobs_complete_through_the_api_workers_and_clock_on_the_cluster(cluster_stack):
    body = {"name": "Ann", "password": "pw"}
    submitted = []
    for vendor_name in ("sync", "async") * 5:
        response = requests.post(f"{cluster_stack.url}/jobs", json=body, params={"vendor": vendor_name}, timeout=5)
        assert response.status_code == 202, response.text
        submitted.append(response.json()["request_id"])
    repeated = requests.post(f"{cluster_stack.url}/jobs", json=body, params={"vendor": "sync"},
                             headers={"Idempotency-Key": "k-1"}, timeout=5)
    again = requests.post(f"{cluster_stack.url}/jobs", json=body, params={"vendor": "sync"},
                          headers={"Idempotency-Key": "k-1"}, timeout=5)
    assert again.json()["request_id"] == repeated.json()["request_id"]

    def statuses():
        return [requests.get(f"{cluster_stack.url}/jobs/{request_id}", timeout=5).json()["status"] for request_id in submitted]

    wait_until(lambda: set(statuses()) == {"complete"}, 30, "every job to complete")
    ready = requests.get(f"{cluster_stack.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    wait_until(lambda: requests.get(f"{cluster_stack.url}/metrics", timeout=5).status_code == 200, 10, "metrics")


def test_a_cluster_waits_for_one_replica_unless_told_otherwise_and_mongodb_concerns_reach_the_client():
    from service.config import Config, ConfigError
    from service.store import connect

    key = {"ENCRYPTION_KEY": "k"}
    assert Config.from_env(key).redis_wait_replicas == 0
    assert Config.from_env({**key, "REDIS_CLUSTER": "true"}).redis_wait_replicas == 1
    assert Config.from_env({**key, "REDIS_CLUSTER": "true", "REDIS_WAIT_REPLICAS": "0"}).redis_wait_replicas == 0
    with pytest.raises(ConfigError, match="REDIS_WAIT_REPLICAS"):
        Config.from_env({**key, "REDIS_WAIT_REPLICAS": "-1"})
    client = connect("mongodb://127.0.0.1:1/vendorfetch", write_concern="majority", read_concern="majority")
    assert client.write_concern.document == {"w": "majority"} and client.read_concern.level == "majority"
    client.close()
