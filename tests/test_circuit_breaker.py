"""The circuit breaker against a real Redis: opens, cools down, lets one probe through, closes.

A call's check is part of the limiter's start, as the worker's gate asks for it.
"""

import itertools
import time

import pytest

from devtools.stack import wait_until
from queueing.breaker import PROBE_POLL_MS, CircuitBreaker
from queueing.ratelimit import RateLimiter
from vendors.registry import Vendor


def vendor(**settings) -> Vendor:
    # Limits no test reaches: every wait below is the breaker's.
    return Vendor(name="acme", mode="sync", url="http://acme/fetch", **{"timeout_s": 1.0, "rate_limit": "1000/second", **settings})


@pytest.fixture
def breaker(redis_client):
    return CircuitBreaker(redis_client)


@pytest.fixture
def start(redis_client):
    """Ask for a new job's start as the worker's gate does, through `breaker`; return the ms to wait (0: started)."""
    limiter, jobs = RateLimiter(redis_client, 10), itertools.count()

    def start(breaker: CircuitBreaker, acme: Vendor) -> int:
        grant = limiter.acquire(acme, f"job-{next(jobs)}", breaker.check_args(acme))
        breaker.saw(acme, grant.failures)
        assert grant.by_breaker == (grant.wait_ms > 0)
        return grant.wait_ms
    return start


def test_the_breaker_opens_after_consecutive_failures_only(breaker, start):
    acme = vendor(breaker_failures=3, breaker_cooldown_s=30)
    assert [breaker.failed(acme), breaker.failed(acme)] == [0, 0]
    breaker.succeeded(acme)
    assert [breaker.failed(acme), breaker.failed(acme)] == [0, 0]
    assert start(breaker, acme) == 0 and not breaker.tripped(acme)
    assert breaker.failed(acme) == 30
    assert 29_000 < start(breaker, acme) <= 30_000 and breaker.tripped(acme)


def test_a_success_resets_the_failures_its_check_saw_whichever_worker_counted_them(redis_client, start):
    acme = vendor(breaker_failures=3, breaker_cooldown_s=30)
    counting, answered = CircuitBreaker(redis_client), CircuitBreaker(redis_client)  # two worker processes
    assert [counting.failed(acme), counting.failed(acme)] == [0, 0]
    assert start(answered, acme) == 0
    answered.succeeded(acme)
    assert [counting.failed(acme), counting.failed(acme)] == [0, 0]  # counted from zero again
    assert counting.failed(acme) == 30


def test_a_success_checked_before_the_failures_leaves_their_count(redis_client, start):
    acme = vendor(breaker_failures=3, breaker_cooldown_s=30)
    counting, answered = CircuitBreaker(redis_client), CircuitBreaker(redis_client)
    assert start(answered, acme) == 0  # no failures yet: its success has nothing to reset, and writes nothing
    assert [counting.failed(acme), counting.failed(acme)] == [0, 0]
    answered.succeeded(acme)
    assert counting.failed(acme) == 30


def test_after_the_cooldown_one_probe_goes_and_its_success_closes_the_breaker(breaker, start):
    acme = vendor(breaker_failures=1, breaker_cooldown_s=0.3)
    breaker.failed(acme)
    wait_until(lambda: start(breaker, acme) == 0, 2, "the probe to be let through")
    assert start(breaker, acme) == PROBE_POLL_MS  # the others wait while the probe is out
    breaker.succeeded(acme)
    assert [start(breaker, acme), start(breaker, acme)] == [0, 0]


def test_a_failed_probe_opens_the_breaker_for_another_cooldown(breaker, start):
    acme = vendor(breaker_failures=1, breaker_cooldown_s=1.0)
    breaker.failed(acme)
    wait_until(lambda: start(breaker, acme) == 0, 3, "the probe to be let through")
    assert breaker.failed(acme) == 1.0
    assert 0 < start(breaker, acme) <= 1000  # open again, for at most another cooldown


def test_a_probe_that_never_answers_lets_another_job_probe(breaker, start):
    acme = vendor(breaker_failures=1, breaker_cooldown_s=0.1, timeout_s=0.1)
    breaker.failed(acme)
    began = time.monotonic()  # before the first probe, so a slow check can only lengthen what is measured
    wait_until(lambda: start(breaker, acme) == 0, 2, "the probe to be let through")
    wait_until(lambda: start(breaker, acme) == 0, 3, "a second probe")
    assert time.monotonic() - began >= 1.1  # the second came no sooner than the vendor's timeout plus the grace


def test_breaker_failures_zero_turns_the_breaker_off(breaker, start):
    acme = vendor(breaker_failures=0)
    assert [breaker.failed(acme) for _ in range(10)] == [0] * 10
    assert start(breaker, acme) == 0 and not breaker.tripped(acme)


def test_a_job_the_breaker_holds_takes_no_start(redis_client, breaker):
    acme, limiter = vendor(breaker_failures=1, breaker_cooldown_s=30, rate_limit="1/minute"), RateLimiter(redis_client, 10)
    breaker.failed(acme)
    held = limiter.acquire(acme, "job-1", breaker.check_args(acme))
    assert held.by_breaker and held.wait_ms > 0 and limiter.usage(acme).started == 0
    breaker.succeeded(acme)  # another worker's probe got an answer
    assert limiter.acquire(acme, "job-1", breaker.check_args(acme)).wait_ms == 0  # the minute's one start was still free
    assert limiter.usage(acme).started == 1
