"""Clients' share of a vendor's starts (start-time fair queuing in the rate limiter), against a real Redis server."""

import time

import pytest

from queueing import ratelimit_lua
from queueing.ratelimit import NewJob, RateLimiter, vendor_key
from vendors.registry import Vendor

MARGIN_MS = 20
DAY_MS = 86_400_000


def vendor(rate_limit: str = "10/second") -> Vendor:
    """A vendor that starts one job at a time, a share of its period apart."""
    return Vendor(name="acme", mode="sync", url="http://acme/fetch", rate_limit=rate_limit, burst=1)


@pytest.fixture
def limiter(redis_client):
    return RateLimiter(redis_client, MARGIN_MS)


def admit(limiter, acme, client, count, weight=1, cap=None):
    return [limiter.admit(NewJob(acme, f"{client}-{n}", client, weight, cap)) for n in range(count)]


def script_calls(redis_client) -> int:
    """Return how many EVALSHA calls the Redis server has run."""
    return redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def turns(redis_client, acme) -> list[str]:
    """Dispatch every job in line, in turn order (a limiter that plans a day ahead takes them all now); return their clients."""
    planner, order = RateLimiter(redis_client, MARGIN_MS, horizon_ms=DAY_MS), []
    while dispatched := planner.dispatch(acme):
        order += [job.request_id.split("-", 1)[0] for job in dispatched]  # admitted as CLIENT-N
    return order


def test_a_client_that_comes_later_takes_turns_at_once_instead_of_waiting_behind_a_backlog(limiter, redis_client):
    acme = vendor()
    heavy = admit(limiter, acme, "a", 50)
    assert 1 <= sum(a.dispatched for a in heavy) < 50 and all(a.accepted for a in heavy)  # the rest wait in line
    b, c = admit(limiter, acme, "b", 5), admit(limiter, acme, "c", 5)
    assert all(a.accepted for a in b + c)
    # Told honestly: b's first job starts within a few turns, a's last one after all of them.
    assert b[0].wait_s < 0.5 and heavy[-1].wait_s > 4
    order = turns(redis_client, acme)
    # On a slow machine time passes while the jobs are admitted, and a few come within the dispatch horizon at once.
    assert len(order) == 60 - sum(a.dispatched for a in heavy + b + c)
    assert order[:15].count("b") == sum(not a.dispatched for a in b) and order[:15].count("c") == sum(not a.dispatched for a in c)
    assert set(order[15:]) == {"a"}


def test_clients_with_work_waiting_share_turns_by_weight(limiter, redis_client):
    acme = vendor()
    three, one = admit(limiter, acme, "three", 60, weight=3), admit(limiter, acme, "one", 60, weight=1)
    # Every turn, in order: the jobs dispatched as they were admitted (a few more on a slow machine,
    # as time passes while they are admitted), then those that waited in line.
    order = ["three"] * sum(a.dispatched for a in three) + ["one"] * sum(a.dispatched for a in one) + turns(redis_client, acme)
    assert len(order) == 120
    # While both have work waiting (the first 60 turns, say), three of every four turns are the heavier client's.
    assert 43 <= order[:60].count("three") <= 47


def test_a_client_at_its_cap_is_refused_alone_until_a_turn_frees_a_place(limiter, redis_client):
    acme = vendor("1/minute")
    assert [a.dispatched for a in admit(limiter, acme, "capped", 3, cap=2)] == [True, False, False]
    refused = limiter.admit(NewJob(acme, "capped-3", "capped", 1, 2))
    assert not refused.accepted and refused.by_client and "2 jobs waiting" in refused.refusal
    assert 59 <= refused.wait_s <= 61  # when its first job in line has its turn
    assert limiter.admit(NewJob(acme, "other-0", "other")).accepted
    assert limiter.in_line(acme) == {"capped": 2, "other": 1}
    turns(redis_client, acme)
    assert limiter.in_line(acme) == {} and limiter.admit(NewJob(acme, "capped-3", "capped", 1, 2)).accepted


def test_a_batch_takes_one_script_call_per_vendor_and_admits_each_job_as_if_it_came_alone(limiter, redis_client):
    acme, other = vendor("1/minute"), Vendor(name="other", mode="sync", url="http://other/fetch", rate_limit="1/minute")
    jobs = [NewJob(acme, f"capped-{n}", "capped", 1, 2) for n in range(4)]
    jobs.insert(2, NewJob(other, "other-0"))
    redis_client.script_load(ratelimit_lua.ADMIT)  # counted below: the calls, not the first one's loading
    calls_before = script_calls(redis_client)

    admissions = limiter.admit_many(jobs)

    assert script_calls(redis_client) - calls_before == 2
    # As in the test above, one by one: the first starts, two wait in line, the fourth meets its client's cap.
    assert [(a.accepted, a.dispatched) for a in admissions] == [(True, True), (True, False), (True, True), (True, False), (False, False)]
    assert admissions[-1].by_client and 59 <= admissions[-1].wait_s <= 61
    assert limiter.in_line(acme) == {"capped": 2} and limiter.in_line(other) == {}


def test_each_start_dispatches_the_next_in_line_and_every_job_starts_once_in_turn(limiter):
    acme = vendor()
    admissions = admit(limiter, acme, "a", 8)
    order = [f"a-{n}" for n, a in enumerate(admissions) if a.dispatched]
    assert len(order) < 8
    started, deadline = [], time.monotonic() + 10
    for request_id in iter(lambda: order[len(started)] if len(started) < len(order) else None, None):
        grant = limiter.acquire(acme, request_id)
        order += [job.request_id for job in grant.dispatched]
        if grant.wait_ms == 0:
            started.append(request_id)
        else:
            assert time.monotonic() < deadline, f"{request_id} never started"
            time.sleep(grant.wait_ms / 1000)
    assert started == [f"a-{n}" for n in range(8)]


def test_a_withdrawn_job_passes_the_turn_on_when_its_message_comes(limiter):
    acme = vendor("1/minute")
    admit(limiter, acme, "a", 2)  # the first is dispatched, the second waits in line
    limiter.withdraw(acme, "a-0")
    grant = limiter.acquire(acme, "a-0")
    assert grant.wait_ms is None and [job.request_id for job in grant.dispatched] == ["a-1"]
    assert 59_000 <= grant.dispatched[0].delay_ms <= 61_000  # still a minute after the start a-0 was given


def test_the_clock_dispatches_when_no_dispatched_job_is_left_to_pass_the_turn_on(limiter, redis_client):
    acme = vendor("1/minute")
    admit(limiter, acme, "a", 2)
    assert limiter.dispatch(acme) == []  # a-0's message will pass the turn on
    redis_client.zrem(vendor_key("acme", "waiting"), "a-0")  # say its place went with nobody to pass the turn on
    assert [job.request_id for job in limiter.dispatch(acme)] == ["a-1"]


def test_a_client_that_withdrew_all_its_jobs_in_line_is_not_set_back_for_them(limiter, redis_client):
    acme = vendor("1/minute")
    admit(limiter, acme, "a", 20)
    for n in range(1, 20):
        limiter.withdraw(acme, f"a-{n}")
    admit(limiter, acme, "b", 5)
    limiter.admit(NewJob(acme, "a-again", "a"))
    assert "a" in turns(redis_client, acme)[:2]


def test_a_client_that_withdraws_and_resubmits_its_job_in_line_keeps_no_place_ahead(limiter, redis_client):
    acme, line = vendor("1/minute"), vendor_key("acme", "fair")
    admit(limiter, acme, "b", 3)  # b-0 starts; b-1 and b-2 wait in line, a turn apart
    limiter.admit(NewJob(acme, "a-0", "a"))  # level with the vendor's virtual time, ahead of b-1
    first_tag = redis_client.zscore(line, "a-0")
    limiter.withdraw(acme, "a-0")
    limiter.admit(NewJob(acme, "a-1", "a"))
    # A turn later, level with b-1: withdrawing and sending again cannot keep a client at the front.
    assert redis_client.zscore(line, "a-1") == first_tag + 1 == redis_client.zscore(line, "b-1")


def test_a_dispatched_job_keeps_when_it_joined_the_line(limiter):
    acme = vendor("1/minute")
    before_ms = int(time.time() * 1000)
    admit(limiter, acme, "a", 2)
    [turn] = limiter.forget(acme, "a-0")
    assert turn.request_id == "a-1" and before_ms - 1000 <= turn.joined_ms <= before_ms + 1000


def test_a_job_in_line_is_expected_to_start_after_those_ahead_of_it(limiter):
    acme = vendor("1/second")
    admissions = admit(limiter, acme, "a", 5)
    assert [a.dispatched for a in admissions] == [True, False, False, False, False]
    share_s = (1000 + MARGIN_MS) / 1000
    assert limiter.expected_wait_s(acme, "a-4") == pytest.approx(4 * share_s, abs=0.2)
    assert admissions[4].wait_s == pytest.approx(4 * share_s, abs=0.2)


def test_with_max_in_flight_jobs_wait_in_line_for_a_lease_and_each_release_dispatches_the_next(limiter, redis_client):
    acme = Vendor(name="acme", mode="sync", url="http://acme/fetch", rate_limit="1000/second", max_in_flight=2, timeout_s=0.5)
    admissions = admit(limiter, acme, "a", 5)
    assert [a.dispatched for a in admissions] == [True, True, False, False, False]  # a lease each, the rest in line
    assert [limiter.acquire(acme, f"a-{n}").wait_ms for n in (0, 1)] == [0, 0]
    assert limiter.dispatch(acme) == []  # both leases are held by calls in progress
    [turn] = limiter.release(acme, "a-0")
    assert turn.request_id == "a-2"
    assert limiter.acquire(acme, "a-2").wait_ms == 0
    # a-1's worker never says its call ended: its lease comes back after the call's timeout and slack.
    lease = redis_client.zscore(vendor_key("acme", "inflight"), "a-1")
    time.sleep(max(0.0, lease / 1000 - time.time()) + 0.05)
    dispatched = [turn.request_id for turn in limiter.dispatch(acme)]
    assert dispatched[0] == "a-3"  # and a-4 if a-2's lease, taken just after, expired too
    assert redis_client.zcard(vendor_key("acme", "inflight")) == 2


def test_a_job_given_up_or_withdrawn_after_dispatch_passes_its_lease_to_the_next_in_line_at_once(limiter, redis_client):
    acme = Vendor(name="acme", mode="sync", url="http://acme/fetch", rate_limit="1000/second", max_in_flight=1, timeout_s=60)
    assert [a.dispatched for a in admit(limiter, acme, "a", 4)] == [True, False, False, False]
    assert [turn.request_id for turn in limiter.forget(acme, "a-0")] == ["a-1"]
    assert [turn.request_id for turn in limiter.withdraw(acme, "a-1")] == ["a-2"]
    assert limiter.withdraw(acme, "a-3") == []  # still in line: it held no lease to pass on
    assert redis_client.zrange(vendor_key("acme", "inflight"), 0, -1) == [b"a-2"]
    assert limiter.dispatch(acme) == []
