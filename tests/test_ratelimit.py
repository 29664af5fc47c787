"""The Redis rate limiter itself, against a real Redis: starts, planned starts, pauses, quotas, backlog, leases."""

import queue
import random
import threading
import time

import pytest

from queueing.ratelimit import NewJob, RateLimiter, vendor_key
from vendors.registry import Vendor

MARGIN_MS = 100


def vendor(rate_limit: str, **settings) -> Vendor:
    return Vendor(name="acme", mode="sync", url="http://acme/fetch", rate_limit=rate_limit, **settings)

DAY_MS = 86_400_000


@pytest.fixture
def limiter(redis_client):
    """A limiter that dispatches every job as it is admitted: most tests here are about planning starts."""
    return RateLimiter(redis_client, MARGIN_MS, horizon_ms=DAY_MS)


def most_in_any_window(starts: list[float], period_s: float) -> int:
    """Count the most starts that fall in one window of `period_s` (half-open, as the mock vendors count)."""
    starts = sorted(starts)
    return max(sum(1 for other in starts[i:] if other < start + period_s) for i, start in enumerate(starts))


def test_sixteen_threads_never_start_more_than_the_limit_in_any_window(limiter):
    acme = vendor("10/second")
    jobs: queue.Queue[int] = queue.Queue()
    for n in range(45):
        jobs.put(n)
    starts: dict[int, float] = {}

    def worker() -> None:
        while True:
            try:
                n = jobs.get_nowait()
            except queue.Empty:
                return
            while wait_ms := limiter.acquire(acme, f"job-{n}").wait_ms:
                # Stand-in for the delay set: come back at the slot, sometimes a little late.
                time.sleep(wait_ms / 1000 + random.choice([0, 0, 0.02, 0.2]))
            starts[n] = time.monotonic()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(starts) == 45
    assert most_in_any_window(list(starts.values()), 1.0) <= 10


def slots_of(redis_client, names: list[str], vendor_name: str = "acme") -> list[float | None]:
    """Return the jobs' planned starts in ms of the Redis server's clock (None: started or unknown)."""
    offset = float(redis_client.hget(vendor_key(vendor_name, "state"), "offset") or 0)
    scores = [redis_client.zscore(vendor_key(vendor_name, "waiting"), name) for name in names]
    return [None if score is None else score + offset for score in scores]


def redis_ms(redis_client) -> float:
    """Return the Redis server's clock in ms, which the limiter plans by."""
    seconds, microseconds = redis_client.time()
    return seconds * 1000 + microseconds / 1000


def test_waiting_jobs_get_starts_in_submission_order_at_an_even_pace_that_uses_the_whole_quota(limiter, redis_client):
    acme = vendor("5/second")
    waits = [limiter.acquire(acme, f"job-{n}").wait_ms for n in range(15)]
    slots = slots_of(redis_client, [f"job-{n}" for n in range(15)])
    assert waits[:5] == [0] * 5 and slots[:5] == [None] * 5  # started: no longer planned
    # The sixth starts one period plus the margin after the first; the rest follow a fifth of that apart.
    assert 1000 + MARGIN_MS - 100 <= waits[5] <= 1000 + MARGIN_MS
    assert [later - earlier for earlier, later in zip(slots[5:], slots[6:])] == pytest.approx([(1000 + MARGIN_MS) / 5] * 9, abs=1)


def test_a_burst_below_the_limit_starts_that_many_at_once_and_paces_the_rest(limiter, redis_client):
    acme = vendor("5/second", burst=2)
    admissions = [limiter.admit(NewJob(acme, f"job-{n}")) for n in range(8)]
    slots = slots_of(redis_client, [f"job-{n}" for n in range(8)])
    share_ms = (1000 + MARGIN_MS) / 5
    # Two start at once, the third two shares after the first (no three in any two shares), then
    # one a share at least; the limit holds throughout.
    assert [a.wait_s for a in admissions[:2]] == [0, 0] and all(a.wait_s > 0 for a in admissions[2:])
    assert slots == sorted(slots) and slots[2] - slots[0] >= 2 * share_ms
    assert all(later - earlier >= share_ms for earlier, later in zip(slots[2:], slots[3:]))
    assert most_in_any_window([slot / 1000 for slot in slots], 1.0) <= 5


def test_an_idle_vendor_earns_its_burst_back(limiter, redis_client):
    acme = vendor("10/second", burst=2)
    assert [limiter.admit(NewJob(acme, name)).wait_s for name in ("a", "b")] == [0, 0]
    time.sleep(0.25)  # more than two shares (2 x 110 ms): the next two may start at once again
    assert [limiter.admit(NewJob(acme, name)).wait_s for name in ("c", "d")] == [0, 0]
    limiter.admit(NewJob(acme, "e"))
    c, e = slots_of(redis_client, ["c", "e"])
    assert e - c >= 2 * (1000 + MARGIN_MS) / 10  # the third of a new burst waits two shares after the first


def test_a_job_back_before_its_slot_keeps_it(limiter):
    acme = vendor("1/second")
    assert limiter.acquire(acme, "first").wait_ms == 0
    slot_ms = limiter.acquire(acme, "second").wait_ms
    again_ms = limiter.acquire(acme, "second").wait_ms
    assert 0 < again_ms <= slot_ms


def test_a_late_job_starts_at_once_when_its_window_still_has_room(limiter):
    acme = vendor("2/second")
    assert [limiter.acquire(acme, name).wait_ms for name in ("a", "b")] == [0, 0]
    wait_ms = limiter.acquire(acme, "c").wait_ms
    time.sleep(wait_ms / 1000 + 0.3)  # well past the margin
    assert limiter.acquire(acme, "c").wait_ms == 0


def test_a_late_job_finds_the_window_full_and_waits_only_until_it_has_room(limiter, redis_client):
    acme = vendor("1/second")
    assert limiter.acquire(acme, "a").wait_ms == 0
    assert limiter.acquire(acme, "b").wait_ms > 0
    c_wait_ms = limiter.acquire(acme, "c").wait_ms
    time.sleep(c_wait_ms / 1000 + 0.05)
    assert limiter.acquire(acme, "c").wait_ms == 0
    # b comes back a second late: c started meanwhile, so b waits a window after c, keeping its place.
    b_wait_ms = limiter.acquire(acme, "b").wait_ms
    asked_ms = redis_ms(redis_client)
    assert 0 < b_wait_ms <= 1000 + MARGIN_MS
    # It is planned for when the window frees, a window after c's start: coming back then is on
    # time, not late by its whole wait (how late jobs come spaces later plans).
    assert slots_of(redis_client, ["b"]) == [pytest.approx(asked_ms + b_wait_ms, abs=300)]
    time.sleep(b_wait_ms / 1000)
    assert limiter.acquire(acme, "b").wait_ms == 0


def test_a_pause_holds_every_start_and_pushes_waiting_jobs_back_in_order(limiter, redis_client):
    acme = vendor("2/second")
    assert [limiter.acquire(acme, name).wait_ms for name in ("a", "b")] == [0, 0]
    before = dict(zip("cde", slots_of(redis_client, [limiter.acquire(acme, name).wait_ms and name for name in "cde"])))
    limiter.restrict(acme, 0, 3.0)
    paused_until = int(redis_client.hget(vendor_key("acme", "state"), "pause"))
    assert limiter.acquire(acme, "new").wait_ms > 0
    after = dict(zip(["c", "d", "e", "new"], slots_of(redis_client, ["c", "d", "e", "new"])))
    assert paused_until <= after["c"] <= after["d"] <= after["e"] <= after["new"]
    assert after["d"] - after["c"] == pytest.approx(before["d"] - before["c"], abs=1)  # one shift for all: their spacing stays
    assert limiter.acquire(acme, "c").wait_ms > 0  # early: it waits for its new time
    assert slots_of(redis_client, ["c"])[0] == after["c"]


def test_quota_headers_stricter_than_the_limit_are_followed(limiter):
    acme = vendor("100/second")
    limiter.restrict(acme, 2, 2.0)
    assert [limiter.acquire(acme, name).wait_ms for name in ("a", "b")] == [0, 0]
    assert limiter.acquire(acme, "c").wait_ms >= 2000 - 40


def test_a_later_report_of_the_same_window_cannot_loosen_the_quota(limiter):
    acme = vendor("100/second")
    limiter.restrict(acme, 1, 2.0)
    limiter.restrict(acme, 50, 2.2)  # an answer that left the vendor earlier, arriving late
    assert limiter.acquire(acme, "a").wait_ms == 0
    assert limiter.acquire(acme, "b").wait_ms >= 2000 - 40


def test_a_full_backlog_refuses_new_jobs_until_the_next_waiting_one_starts(limiter):
    acme = vendor("1/second", max_backlog=3)
    # The first starts at once; three wait for their start.
    assert [limiter.admit(NewJob(acme, f"job-{n}")).accepted for n in range(5)] == [True, True, True, True, False]
    refused = limiter.admit(NewJob(acme, "job-5"))
    assert not refused.accepted and refused.wait_s == pytest.approx(1.1, abs=0.05)
    time.sleep(refused.wait_s + 0.01)
    assert limiter.admit(NewJob(acme, "job-5")).accepted


def test_a_paused_vendor_refuses_new_jobs_that_would_wait_past_max_wait(limiter):
    acme = vendor("10/second", max_wait_s=2)
    limiter.restrict(acme, 0, 5.0)
    refused = limiter.admit(NewJob(acme, "job"))
    assert not refused.accepted and "would wait longer than 2 s" in refused.refusal
    assert refused.wait_s == pytest.approx(3.0, abs=0.05)  # then the wait is down to max_wait_s


def test_a_job_that_gives_up_its_start_frees_its_place(limiter):
    acme = vendor("1/second", max_backlog=1)
    assert [limiter.admit(NewJob(acme, name)).accepted for name in ("a", "b", "c")] == [True, True, False]
    limiter.forget(acme, "b")
    assert limiter.admit(NewJob(acme, "c")).accepted


def test_a_withdrawn_job_frees_its_place_and_its_message_takes_no_start_when_it_comes(limiter):
    acme = vendor("1/minute", max_backlog=1)
    assert [limiter.admit(NewJob(acme, name)).accepted for name in ("a", "b", "c")] == [True, True, False]
    assert limiter.acquire(acme, "a").wait_ms == 0
    limiter.withdraw(acme, "b")  # cancelled while it waited
    assert limiter.admit(NewJob(acme, "c")).accepted and limiter.usage(acme).backlog == 1
    assert limiter.acquire(acme, "b").wait_ms is None  # its message came: it is dropped, not planned again
    assert limiter.acquire(acme, "b").wait_ms > 0  # the mark is used up: a later message of it waits like any other
    assert limiter.usage(acme).started == 1


def test_scripts_a_restarted_server_lost_are_loaded_again(limiter, redis_client):
    acme = vendor("2/second")
    assert limiter.admit(NewJob(acme, "before")).accepted
    redis_client.script_flush()  # what a restart without persistence does
    assert limiter.admit(NewJob(acme, "after")).accepted
    assert limiter.admit(NewJob(acme, "third")).wait_s > 0  # both earlier starts were planned
    assert limiter.usage(acme).backlog == 1


def test_expected_waits_follow_the_starts_planned_at_submission(limiter, redis_client):
    acme = vendor("2/second")
    names = [f"job-{n}" for n in range(6)]
    admissions = [limiter.admit(NewJob(acme, name)) for name in names]
    slots = slots_of(redis_client, names)
    # Two start at once; the third a period plus the margin after the first; the rest half of that apart.
    assert [a.wait_s for a in admissions[:2]] == [0, 0]
    assert [slot - slots[0] for slot in slots[2:]] == pytest.approx([1100, 1650, 2200, 2750], abs=2)
    assert all(a.delay_ms == round(a.wait_s * 1000) for a in admissions[2:])  # the message comes back at its start
    job_5, requeued = limiter.expected_waits_s([(acme, "job-5"), (acme, "requeued")])  # read at one moment
    assert 0 < job_5 <= 2.75
    # A job queued again by a sweep holds no start: it would get the next one, half a period later.
    assert requeued - job_5 == pytest.approx(0.55, abs=0.005)


def test_a_retried_jobs_earlier_call_still_counts(limiter):
    once = vendor("1/second")
    assert limiter.acquire(once, "job-a").wait_ms == 0  # the first call
    assert limiter.acquire(once, "job-a").wait_ms > 800  # its retry must wait out the window


def test_every_limit_of_a_vendor_is_kept_and_the_tighter_binds(limiter, redis_client):
    acme = vendor("3/second, 5/minute")
    assert [limiter.acquire(acme, f"job-{n}").wait_ms for n in range(3)] == [0, 0, 0]
    names = [f"job-{n}" for n in range(3, 8)]
    admissions = [limiter.admit(NewJob(acme, name)) for name in names]
    starts = [time.time() * 1000] * 3 + slots_of(redis_client, names)
    # The minute's limit allows two more, at its pace; the sixth waits until the first leaves the minute.
    assert [a.wait_s < 60 for a in admissions] == [True, True, False, False, False]
    assert most_in_any_window([start / 1000 for start in starts], 1.0) <= 3
    assert most_in_any_window([start / 1000 for start in starts], 60.0) <= 5


def test_a_short_limit_binds_the_starts_within_a_longer_one(limiter):
    acme = vendor("2/second, 1000/minute")
    assert [limiter.acquire(acme, name).wait_ms for name in ("a", "b")] == [0, 0]
    assert 1000 <= limiter.acquire(acme, "c").wait_ms <= 1000 + MARGIN_MS


def test_a_day_long_limit_is_kept(limiter):
    acme = vendor("2/day")
    assert [limiter.acquire(acme, name).wait_ms for name in ("a", "b")] == [0, 0]
    assert limiter.acquire(acme, "c").wait_ms >= 86_400_000 - 1000


def test_max_in_flight_holds_starts_until_a_lease_comes_back(limiter, redis_client):
    acme = vendor("100/second", max_in_flight=2, timeout_s=0.5)
    assert [limiter.acquire(acme, name).wait_ms for name in ("a", "b")] == [0, 0]
    wait_ms = limiter.acquire(acme, "c").wait_ms
    assert 0 < wait_ms <= 100  # soon: a call may end at any moment
    limiter.release(acme, "a")
    assert limiter.acquire(acme, "c").wait_ms == 0
    # b's worker never says its call ended: its lease comes back after the call's timeout and slack.
    assert limiter.acquire(acme, "d").wait_ms > 0
    lease = redis_client.zscore(vendor_key("acme", "inflight"), "b")
    time.sleep(max(0.0, lease / 1000 - time.time()) + 0.05)
    limiter.release(acme, "c")
    assert limiter.acquire(acme, "d").wait_ms == 0
    assert redis_client.zcard(vendor_key("acme", "inflight")) == 1


def hold_leases(limiter: RateLimiter, acme: Vendor, names: list[str], seconds: float) -> None:
    """Start a job per name, hold their leases for `seconds`, then give them back, as the calls' workers would."""
    assert [limiter.acquire(acme, name).wait_ms for name in names] == [0] * len(names)
    time.sleep(seconds)
    for name in names:
        limiter.release(acme, name)


def test_with_max_in_flight_a_job_in_line_expects_to_wait_for_the_leases_ahead_of_it(redis_client):
    limiter, acme = RateLimiter(redis_client, MARGIN_MS), vendor("1000/second", max_in_flight=2, timeout_s=5)
    hold_leases(limiter, acme, ["a", "b"], 0.4)
    admissions = limiter.admit_many([NewJob(acme, f"job-{n}") for n in range(10)])
    assert [a.dispatched for a in admissions] == [True] * 2 + [False] * 8  # the others wait for a lease
    # Eight jobs ahead of the last one's start, two at a time, each holding its lease 0.4 s or more.
    assert limiter.expected_wait_s(acme, "job-9") >= 8 * 0.4 / 2 * 0.9
    assert admissions[-1].wait_s >= 8 * 0.4 / 2 * 0.9
    assert limiter.usage(acme).new_job_wait_s >= 0.4 / 2 * 0.9  # every lease is held: one must come back first


def test_with_max_in_flight_a_job_that_would_wait_past_max_wait_is_refused(redis_client):
    limiter, acme = RateLimiter(redis_client, MARGIN_MS), vendor("1000/second", max_in_flight=1, timeout_s=5, max_wait_s=1)
    hold_leases(limiter, acme, ["a"], 0.4)
    admissions = limiter.admit_many([NewJob(acme, f"job-{n}") for n in range(10)])
    accepted = [a.accepted for a in admissions]
    assert accepted[:2] == [True, True] and not any(accepted[3:])  # the fourth would start 1.2 s or more from now
    assert "max_wait_s" in admissions[-1].refusal


def test_the_margin_follows_the_start_to_call_delays_workers_report(limiter, redis_client):
    acme = vendor("5/second")
    assert limiter.acquire(acme, "a").wait_ms == 0
    time.sleep(0.3)
    limiter.calling(acme)  # the call left 300 ms after its start
    limiter.acquire(acme, "b").wait_ms  # reports it
    names = [f"job-{n}" for n in range(10)]
    [limiter.admit(NewJob(acme, name)) for name in names]
    slots = slots_of(redis_client, names)
    gaps = [later - earlier for earlier, later in zip(slots[5:], slots[6:])]
    assert all((1000 + 290) / 5 <= gap <= (1000 + 305) / 5 for gap in gaps), gaps


def test_a_vendor_at_a_million_a_minute_keeps_a_small_state_however_many_start(limiter, redis_client):
    acme = vendor("1000000/minute")
    for first in range(0, 6000, 500):
        names = [f"job-{n}" for n in range(first, first + 500)]
        assert all(a.accepted for a in limiter.admit_many([NewJob(acme, name) for name in names]))
        for name in names:
            assert limiter.acquire(acme, name).wait_ms == 0
    keys = redis_client.keys("{vendor:acme}:*")
    sizes = {key.decode(): redis_client.llen(key) for key in keys if redis_client.type(key) == b"list"}
    assert len(keys) <= 8
    assert all(size <= 1002 for size in sizes.values())  # buckets, not starts: at most a thousand and one
    assert redis_client.zcard(vendor_key("acme", "waiting")) == 0
    assert limiter.usage(acme).started == 6000
