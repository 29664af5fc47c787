"""Tell every worker what a vendor call showed: feed the outcome to the limiter and the breaker."""

from __future__ import annotations

from queueing.breaker import CircuitBreaker
from queueing.ratelimit import RateLimiter
from vendors.quota import Quota
from vendors.registry import Vendor

#: How long to pause a vendor that answers 429 without saying for how long.
MIN_PAUSE_S = 1.0
DEFAULT_PAUSE_S = 5.0


class VendorFeedback:
    """Record a vendor's answers, pushback and failures in the state all workers share."""

    def __init__(self, limiter: RateLimiter, breaker: CircuitBreaker) -> None:
        self.limiter = limiter
        self.breaker = breaker

    def calling(self, vendor: Vendor) -> None:
        """Note the moment the job this thread started calls its vendor."""
        self.limiter.calling(vendor)

    def answered(self, vendor: Vendor, quota: Quota | None) -> None:
        """Close the breaker, and follow the vendor's quota headers where they are stricter."""
        self.breaker.succeeded(vendor)
        if quota is not None:
            self.limiter.restrict(vendor, quota.remaining, quota.reset_s)

    def pushed_back(self, vendor: Vendor, retry_after_s: float | None) -> float:
        """Pause the vendor for every worker after a 429; return the pause in seconds."""
        self.breaker.succeeded(vendor)
        # A Retry-After of 0 (or a past date) still means "not now": never retry in a tight loop.
        pause_s = DEFAULT_PAUSE_S if retry_after_s is None else max(retry_after_s, MIN_PAUSE_S)
        self.limiter.restrict(vendor, 0, pause_s)
        return pause_s

    def failed(self, vendor: Vendor) -> None:
        """Count a failure; while the breaker is open, pause the vendor so waiting jobs keep their order."""
        cooldown_s = self.breaker.failed(vendor)
        if cooldown_s:
            self.limiter.restrict(vendor, 0, cooldown_s)
