"""A circuit breaker per vendor, shared by every worker through Redis.

    closed ──(breaker_failures consecutive failures)──> open ──(breaker_cooldown_s)──> half-open
      ▲                                                   ▲                              │
      └──────────────── the probe succeeds ───────────────┴──── the probe fails ─────────┘

Half-open lets exactly one call through (the probe); every other job waits. The check before a
call is part of the rate limiter's start (its ACQUIRE script, given `check_args`), so a start
costs one script call and a job the breaker holds takes no start. Any answer from the vendor (a
2xx, a 4xx, a 429) counts as a success; timeouts, connection errors and 5xx as failures. A
success resets the count when the check before the call (or a failure its process recorded) saw
failures counted: failures are consecutive among the calls checked after them, and a vendor that
keeps answering costs no write. State lives in the hash ``{vendor:v}:breaker`` (failures,
open_until, probe_until in ms).
"""

from __future__ import annotations

import redis

from queueing.ratelimit import NO_BREAKER, BreakerCheck, vendor_key
from queueing.ratelimit_lua import NOW_MS
from vendors.registry import Vendor

#: How long, beyond the vendor's timeout, a probe may take before another job may probe instead.
PROBE_GRACE_MS = 1_000
#: How long jobs wait while a probe is out before they look again.
PROBE_POLL_MS = 500

CLOCK = NOW_MS + """
local now = now_ms()
"""

#: Return the failures, the time the breaker half-opens and the time now, by the scripts' clock.
#: KEYS: breaker.
STATE = CLOCK + """
local state = redis.call('HMGET', KEYS[1], 'failures', 'open_until')
return {tonumber(state[1] or 0), tonumber(state[2] or 0), now}
"""

#: Count a failure; return the ms until the breaker half-opens if it is open now, else 0.
#: KEYS: breaker.  ARGV: failures that open it, cooldown ms.
FAIL = CLOCK + """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures < tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[2]), 'probe_until', 0)
return tonumber(ARGV[2])
"""


class CircuitBreaker:
    """Stop calling a vendor that keeps failing, and probe it again after a cool-down."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.fail_script = client.register_script(FAIL)
        self.state_script = client.register_script(STATE)
        # The vendors with failures counted, as this process last saw: a success resets only those.
        self.failing: set[str] = set()

    @staticmethod
    def check_args(vendor: Vendor) -> BreakerCheck:
        """Return what the limiter's start needs to check the vendor's breaker (nothing to check if it has none)."""
        if not vendor.breaker_failures:
            return NO_BREAKER
        return vendor.breaker_failures, round(vendor.timeout_s * 1000) + PROBE_GRACE_MS, PROBE_POLL_MS

    def saw(self, vendor: Vendor, failures: int) -> None:
        """Note the failures the check before a call counted: the call's success then resets them."""
        if failures:
            self.failing.add(vendor.name)

    def tripped(self, vendor: Vendor) -> bool:
        """Tell whether the breaker is open or half-open."""
        return self.state(vendor)[0] in ("open", "half-open")

    def state(self, vendor: Vendor) -> tuple[str, int]:
        """Return the breaker's state (off, closed, open or half-open) and its consecutive failures."""
        # The scripts' clock, so that no process clock decides what is open.
        failures, open_until, now_ms = self.state_script(keys=[vendor_key(vendor.name, "breaker")])
        if not vendor.breaker_failures:
            return "off", failures
        if failures < vendor.breaker_failures:
            return "closed", failures
        return ("open" if now_ms < open_until else "half-open"), failures

    def succeeded(self, vendor: Vendor) -> None:
        """Close the breaker: the vendor answered.

        Only if this process saw failures counted, at the check before a call or in one it
        recorded: a vendor that keeps answering costs Redis nothing here.
        """
        if vendor.name in self.failing:
            self.failing.discard(vendor.name)
            self.client.delete(vendor_key(vendor.name, "breaker"))

    def failed(self, vendor: Vendor) -> float:
        """Count a failure; return the seconds until the breaker half-opens if it is open, else 0."""
        if not vendor.breaker_failures:
            return 0.0
        self.failing.add(vendor.name)
        cooldown_ms = round(vendor.breaker_cooldown_s * 1000)
        return int(self.fail_script(keys=[vendor_key(vendor.name, "breaker")], args=[vendor.breaker_failures, cooldown_ms])) / 1000
