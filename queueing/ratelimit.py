"""The per-vendor rate limiter shared by every process through Redis: reserve slots, start jobs.

A new job gets its vendor's next free slot when it is submitted, in submission order, and its
message waits for that slot in the broker's delay set. A worker starts a job whose slot has come
(see actors/deferral.py); vendor pushback (a 429, quota headers, an open circuit breaker) pauses
or restricts the vendor for every worker. The jobs holding a slot in the future are the vendor's
backlog, which bounds how much work the API accepts and tells how long each job will wait.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from queueing import ratelimit_lua
from queueing.nodes import run_script_calls
from vendors.registry import Vendor

#: Two quota reports whose reset times differ by less than this describe the same window.
SAME_WINDOW_MS = 1_000
#: The margin is at least this fraction (1/n) of the period: long windows get more slack for jitter.
MARGIN_SHARE_OF_PERIOD = 100


def vendor_key(vendor_name: str, part: str) -> str:
    """Return a key of a vendor's limiter state; the hash tag keeps them all in one cluster slot."""
    return f"{{vendor:{vendor_name}}}:{part}"


@dataclass(frozen=True)
class Admission:
    """Whether a new job got a slot; how long until it starts (or, if refused, until trying again helps)."""

    accepted: bool
    wait_s: float
    delay_ms: int  # how long its message should wait in the delay set
    refusal: str = ""  # why it was refused


@dataclass(frozen=True)
class Usage:
    """A vendor's limiter state now, for operators."""

    started: int  # jobs started in the last period
    backlog: int  # jobs holding a slot in the future
    paused_s: float  # how long the vendor stays paused (a 429, an exhausted quota, an open breaker)
    new_job_wait_s: float  # how long a job submitted now would wait for its slot


class RateLimiter:
    """Start jobs within each vendor's limit, pause vendors that push back, and bound backlogs."""

    def __init__(self, client: redis.Redis, margin_ms: int) -> None:
        self.client = client
        # Slack for early or late starts and uneven network delays; see ratelimit_lua.
        self.margin_ms = margin_ms
        # register_script only hashes the source; nothing touches the server until first use.
        self.scripts = {
            name: client.register_script(getattr(ratelimit_lua, name))
            for name in ("ACQUIRE", "RESTRICT", "ADMIT", "OUTLOOK", "USAGE")
        }

    def admit(self, vendor: Vendor, request_id: str) -> Admission:
        """Reserve the next free slot for a new job, unless max_backlog jobs wait or it would wait past max_wait_s."""
        return self.admit_many([(vendor, request_id)])[0]

    def admit_many(self, jobs: list[tuple[Vendor, str]]) -> list[Admission]:
        """Admit several new jobs, each as `admit` would, in submission order and one round trip."""
        calls = [
            (self.keys(vendor, "slots", "pause"),
             [*self.limit_args(vendor), vendor.max_backlog, round(vendor.max_wait_s * 1000), request_id])
            for vendor, request_id in jobs
        ]
        replies = self.run_many("ADMIT", calls)
        return [self.admission(vendor, *reply) for (vendor, _), reply in zip(jobs, replies)]

    def run_many(self, name: str, calls: list[tuple[list[str], list]]) -> list:
        """Run a script once per (keys, args), one round trip per node; load it where a restarted server lost it."""
        return run_script_calls(self.client, self.scripts[name], calls)

    def admission(self, vendor: Vendor, outcome: int, now_ms: int, at_ms: int) -> Admission:
        """Read the ADMIT script's reply."""
        refusal = {1: "", 0: f"{vendor.max_backlog} jobs are waiting already",
                   -1: f"it is paused: a new job would wait longer than {vendor.max_wait_s:g} s"}[outcome]
        return Admission(outcome == 1, (at_ms - now_ms) / 1000, self.delay_ms(vendor, at_ms - now_ms), refusal)

    def acquire(self, vendor: Vendor, request_id: str) -> int:
        """Start the job now and return 0, or return how many ms its message should wait for its slot."""
        keys = self.keys(vendor, "slots", "pause", "quota")
        wait_ms = int(self.scripts["ACQUIRE"](keys=keys, args=[*self.limit_args(vendor), request_id]))
        return self.delay_ms(vendor, wait_ms)

    def restrict(self, vendor: Vendor, remaining: int, reset_in_s: float) -> None:
        """Allow at most `remaining` more starts in the next `reset_in_s`; 0 pauses the vendor."""
        keys = self.keys(vendor, "slots", "pause", "quota")
        self.scripts["RESTRICT"](keys=keys, args=[remaining, round(reset_in_s * 1000), SAME_WINDOW_MS])

    def forget(self, vendor: Vendor, request_id: str) -> None:
        """Give up the slot of a job that will not start."""
        self.client.zrem(vendor_key(vendor.name, "slots"), request_id)

    def expected_wait_s(self, vendor: Vendor, request_id: str) -> float:
        """Return how long until the job is expected to start (0 once it is due)."""
        return self.expected_waits_s([(vendor, request_id)])[0]

    def expected_waits_s(self, jobs: list[tuple[Vendor, str]]) -> list[float]:
        """Return `expected_wait_s` of several jobs in one round trip."""
        calls = [(self.keys(vendor, "slots", "pause"), [*self.limit_args(vendor), request_id]) for vendor, request_id in jobs]
        return [(at_ms - now_ms) / 1000 for now_ms, at_ms in self.run_many("OUTLOOK", calls)]

    def usage(self, vendor: Vendor) -> Usage:
        """Report how much of its limit the vendor used in the last period, its backlog and its pause."""
        started, backlog, paused_ms, wait_ms = self.scripts["USAGE"](keys=self.keys(vendor, "slots", "pause"), args=self.limit_args(vendor))
        return Usage(started, backlog, paused_ms / 1000, wait_ms / 1000)

    def delay_ms(self, vendor: Vendor, wait_ms: int) -> int:
        """Return how long a message should wait for a slot `wait_ms` away (0: start now).

        It comes back half a margin before the slot: delayed messages arrive late rather than
        early, and a start within half a margin of its slot keeps the limit.
        """
        return max(wait_ms - self.limit_args(vendor)[2] // 2, 1) if wait_ms > 0 else 0

    def limit_args(self, vendor: Vendor) -> list[int]:
        """Return the script arguments limit, period ms, margin ms and burst of a vendor."""
        count, period_s = vendor.limit
        period_ms = round(period_s * 1000)
        return [count, period_ms, max(self.margin_ms, period_ms // MARGIN_SHARE_OF_PERIOD), vendor.burst]

    @staticmethod
    def keys(vendor: Vendor, *parts: str) -> list[str]:
        return [vendor_key(vendor.name, part) for part in parts]
