import orjson
import pytest

from devtools.stack import wait_until
from queueing.lease import LEADER_KEY, SWEEPS_KEY, LeaderLease
from scheduler.runs import run_if_leader


@pytest.fixture
def leases(redis_client):
    started = []

    def lease(identity, lease_s=5.0):
        started.append(LeaderLease(redis_client, lease_s, identity))
        return started[-1]

    yield lease
    for each in started:
        each.stop()


def test_only_one_of_two_clocks_leads_and_it_is_recorded(leases, redis_client):
    a, b = leases("a"), leases("b")
    assert a.try_lead() and not b.try_lead()
    assert a.is_leader() and not b.is_leader()
    assert redis_client.hget(SWEEPS_KEY, "leader") == b"a"


def test_the_holder_renews_its_lease(leases, redis_client):
    a = leases("a", lease_s=5.0)
    a.try_lead()
    redis_client.pexpire(LEADER_KEY, 100)
    assert a.try_lead()
    assert redis_client.pttl(LEADER_KEY) > 4_000


def test_another_clock_takes_over_once_the_lease_runs_out(leases, redis_client):
    a, b = leases("a", lease_s=0.2), leases("b", lease_s=0.2)
    assert a.try_lead()
    wait_until(lambda: not a.is_leader() and not redis_client.exists(LEADER_KEY), 2, "the lease to run out")
    assert b.try_lead() and not a.try_lead()
    assert redis_client.hget(SWEEPS_KEY, "leader") == b"b"


def test_a_stopping_holder_hands_the_lease_back_at_once(leases):
    a, b = leases("a"), leases("b")
    a.start()
    wait_until(a.is_leader, 2, "a to lead")
    a.stop()
    assert not a.is_leader() and b.try_lead()


def test_a_standby_in_the_background_takes_over_one_lease_after_the_holder_stops_renewing(leases):
    a, b = leases("a", lease_s=0.5), leases("b", lease_s=0.5)
    assert a.try_lead()  # and never renews, as if killed
    b.start()
    wait_until(b.is_leader, 1.5, "b to take over")


def test_a_sweep_runs_only_on_the_leader_and_its_counts_are_recorded(leases, redis_client):
    a, b = leases("a"), leases("b")
    a.try_lead()
    assert run_if_leader(b, redis_client, "orphans", lambda: {"queued": 1}) is None
    record = run_if_leader(a, redis_client, "orphans", lambda: {"queued": 2})
    assert record["counts"] == {"queued": 2} and record["by"] == "a"
    assert orjson.loads(redis_client.hget(SWEEPS_KEY, "orphans")) == record


def test_a_failing_sweep_records_its_error(leases, redis_client):
    a = leases("a")
    a.try_lead()

    def broken():
        raise RuntimeError("MongoDB is down")

    assert run_if_leader(a, redis_client, "orphans", broken)["error"] == "RuntimeError: MongoDB is down"
    assert "counts" not in orjson.loads(redis_client.hget(SWEEPS_KEY, "orphans"))
