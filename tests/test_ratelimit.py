"""The Redis rate limiter itself, against a real Redis: starts, reserved slots, pauses, quotas, backlog."""

import queue
import random
import threading
import time

import pytest

from queueing.ratelimit import RateLimiter, vendor_key
from vendors.registry import Vendor

MARGIN_MS = 100
HALF_MARGIN_MS = MARGIN_MS // 2  # waits end this much before the slot


def vendor(rate_limit: str, **settings) -> Vendor:
    return Vendor(name="acme", mode="sync", url="http://acme/fetch", rate_limit=rate_limit, **settings)


@pytest.fixture
def limiter(redis_client):
    return RateLimiter(redis_client, MARGIN_MS)


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
            while wait_ms := limiter.acquire(acme, f"job-{n}"):
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


def test_waiting_jobs_get_slots_in_submission_order_at_an_even_pace_that_uses_the_whole_quota(limiter, redis_client):
    acme = vendor("5/second")
    waits = [limiter.acquire(acme, f"job-{n}") for n in range(15)]
    key = vendor_key("acme", "slots")
    # A started job's entry is named job-N@started; a waiting one keeps its reservation job-N.
    slots = [redis_client.zscore(key, f"job-{n}") or redis_client.zscore(key, f"job-{n}@started") for n in range(15)]
    assert waits[:5] == [0] * 5
    # The sixth starts one period plus the margin after the first; the rest follow a fifth of that apart.
    assert slots[5] - slots[0] == 1000 + MARGIN_MS
    assert [later - earlier for earlier, later in zip(slots[5:], slots[6:])] == [(1000 + MARGIN_MS) / 5] * 9


def slots_of(redis_client, names: list[str]) -> list[float]:
    """Return the jobs' slots, in ms of the Redis server's clock: what the limiter gave, whatever time the calls took."""
    key = vendor_key("acme", "slots")
    return [redis_client.zscore(key, name) or redis_client.zscore(key, f"{name}@started") for name in names]


def test_a_burst_below_the_limit_starts_that_many_at_once_and_paces_the_rest(limiter, redis_client):
    acme = vendor("5/second", burst=2)
    admissions = [limiter.admit(acme, f"job-{n}") for n in range(8)]
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
    assert [limiter.admit(acme, name).wait_s for name in ("a", "b")] == [0, 0]
    time.sleep(0.25)  # more than two shares (2 x 110 ms): the next two may start at once again
    assert [limiter.admit(acme, name).wait_s for name in ("c", "d")] == [0, 0]
    limiter.admit(acme, "e")
    c, e = slots_of(redis_client, ["c", "e"])
    assert e - c >= 2 * (1000 + MARGIN_MS) / 10  # the third of a new burst waits two shares after the first


def test_a_job_back_before_its_slot_keeps_it(limiter):
    acme = vendor("1/second")
    assert limiter.acquire(acme, "first") == 0
    slot_ms = limiter.acquire(acme, "second")
    again_ms = limiter.acquire(acme, "second")
    assert 0 < again_ms <= slot_ms


def test_a_late_job_starts_at_once_when_its_window_still_has_room(limiter):
    acme = vendor("2/second")
    assert [limiter.acquire(acme, name) for name in ("a", "b")] == [0, 0]
    wait_ms = limiter.acquire(acme, "c")
    time.sleep(wait_ms / 1000 + 0.3)  # well past the margin
    assert limiter.acquire(acme, "c") == 0


def test_a_late_job_whose_window_filled_up_goes_to_the_back(limiter, redis_client):
    acme = vendor("1/second")
    assert limiter.acquire(acme, "a") == 0
    b_wait_ms = limiter.acquire(acme, "b")
    c_wait_ms = limiter.acquire(acme, "c")
    time.sleep(c_wait_ms / 1000 + 0.05)
    assert limiter.acquire(acme, "c") == 0
    # b comes back a second late: c started meanwhile, so b gets the next slot, a window after c.
    assert limiter.acquire(acme, "b") > 0
    b, c = slots_of(redis_client, ["b", "c"])
    assert b - c >= 1000 + MARGIN_MS
    assert b_wait_ms < c_wait_ms


def test_a_pause_holds_every_start_and_shifts_reserved_slots_in_order(limiter, redis_client):
    acme = vendor("2/second")
    assert [limiter.acquire(acme, name) for name in ("a", "b")] == [0, 0]
    before = [limiter.acquire(acme, name) for name in ("c", "d", "e")]
    limiter.restrict(acme, 0, 3.0)
    paused_until = int(redis_client.get(vendor_key("acme", "pause")))
    assert limiter.acquire(acme, "new") > 0
    after = {name.decode(): score for name, score in redis_client.zrange(vendor_key("acme", "slots"), 0, -1, withscores=True)}
    assert paused_until <= after["c"] <= after["d"] <= after["e"] <= after["new"]
    assert after["d"] - after["c"] == pytest.approx(before[1] - before[0], abs=2)  # one shift for all: their spacing stays
    assert limiter.acquire(acme, "c") > 0  # early: it waits for its shifted slot
    assert slots_of(redis_client, ["c"])[0] == after["c"]


def test_quota_headers_stricter_than_the_limit_are_followed(limiter):
    acme = vendor("100/second")
    limiter.restrict(acme, 2, 2.0)
    assert [limiter.acquire(acme, name) for name in ("a", "b")] == [0, 0]
    assert limiter.acquire(acme, "c") >= 2000 - HALF_MARGIN_MS - 40


def test_a_later_report_of_the_same_window_cannot_loosen_the_quota(limiter):
    acme = vendor("100/second")
    limiter.restrict(acme, 1, 2.0)
    limiter.restrict(acme, 50, 2.2)  # an answer that left the vendor earlier, arriving late
    assert limiter.acquire(acme, "a") == 0
    assert limiter.acquire(acme, "b") >= 2000 - HALF_MARGIN_MS - 40


def test_a_full_backlog_refuses_new_jobs_until_the_next_waiting_one_starts(limiter):
    acme = vendor("1/second", max_backlog=3)
    # The first starts at once; three wait for their slots.
    assert [limiter.admit(acme, f"job-{n}").accepted for n in range(5)] == [True, True, True, True, False]
    refused = limiter.admit(acme, "job-5")
    assert not refused.accepted and refused.wait_s == pytest.approx(1.1, abs=0.05)
    time.sleep(refused.wait_s + 0.01)
    assert limiter.admit(acme, "job-5").accepted


def test_a_paused_vendor_refuses_new_jobs_that_would_wait_past_max_wait(limiter):
    acme = vendor("10/second", max_wait_s=2)
    limiter.restrict(acme, 0, 5.0)
    refused = limiter.admit(acme, "job")
    assert not refused.accepted and "paused" in refused.refusal
    assert refused.wait_s == pytest.approx(3.0, abs=0.05)  # then the wait is down to max_wait_s


def test_a_job_that_gives_up_its_slot_frees_its_place(limiter):
    acme = vendor("1/second", max_backlog=1)
    assert [limiter.admit(acme, name).accepted for name in ("a", "b", "c")] == [True, True, False]
    limiter.forget(acme, "b")
    assert limiter.admit(acme, "c").accepted


def test_scripts_a_restarted_server_lost_are_loaded_again(limiter, redis_client):
    acme = vendor("2/second")
    assert limiter.admit(acme, "before").accepted
    redis_client.script_flush()  # what a restart without persistence does
    assert limiter.admit(acme, "after").accepted
    usage = limiter.usage(acme)
    assert usage.started + usage.backlog == 2  # both slots were taken


def test_expected_waits_follow_the_slots_given_at_submission(limiter, redis_client):
    acme = vendor("2/second")
    names = [f"job-{n}" for n in range(6)]
    admissions = [limiter.admit(acme, name) for name in names]
    slots = slots_of(redis_client, names)
    # Two start at once; the third a period plus the margin after the first; the rest half of that apart.
    assert [a.wait_s for a in admissions[:2]] == [0, 0]
    assert [slot - slots[0] for slot in slots[2:]] == pytest.approx([1100, 1650, 2200, 2750], abs=1)
    # A message waits half a margin less than its job: it comes back late rather than early.
    assert all(a.delay_ms == round(a.wait_s * 1000) - HALF_MARGIN_MS for a in admissions[2:])
    job_5, requeued = limiter.expected_waits_s([(acme, "job-5"), (acme, "requeued")])  # read at one moment
    assert 0 < job_5 <= 2.75
    # A job queued again by a sweep holds no slot: it would get the next free one, half a period later.
    assert requeued - job_5 == pytest.approx(0.55, abs=0.005)
    assert limiter.acquire(acme, "job-0") == 0
    assert limiter.expected_wait_s(acme, "job-0") == 0


def test_a_retried_jobs_earlier_call_still_counts(redis_client):
    from queueing.ratelimit import RateLimiter
    from vendors.registry import Vendor

    vendor = Vendor(name="once", mode="sync", url="http://127.0.0.1:9/", rate_limit="1/second")
    limiter = RateLimiter(redis_client, margin_ms=100)
    assert limiter.acquire(vendor, "job-a") == 0  # the first call
    assert limiter.acquire(vendor, "job-a") > 800  # its retry must wait out the window
