"""Retry timing: exponential backoff with full jitter, capped."""

import statistics

from actors.runner import backoff_ms
from vendors.registry import Vendor

FLAKY = Vendor(name="flaky", mode="sync", url="http://flaky/fetch", retry_backoff_s=0.5, retry_backoff_max_s=3)


def test_each_retry_waits_anywhere_up_to_a_doubling_cap():
    for attempts, cap_ms in [(1, 500), (2, 1000), (3, 2000), (4, 3000), (9, 3000)]:
        delays = [backoff_ms(FLAKY, attempts) for _ in range(500)]
        assert all(0 <= delay <= cap_ms for delay in delays)
        # Full jitter: the whole range is used, not only its upper half.
        assert min(delays) < cap_ms * 0.1 and max(delays) > cap_ms * 0.9


def test_retry_gaps_grow_on_average():
    means = [statistics.mean(backoff_ms(FLAKY, attempts) for _ in range(500)) for attempts in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
