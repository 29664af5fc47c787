"""The per-vendor rate limiter shared by every process through Redis: share turns, plan starts, start jobs.

A new job waits in its vendor's line until its turn: clients with jobs in line take turns in
proportion to their weights (start-time fair queuing). A job whose turn comes is *dispatched*: it
gets its planned start and its message waits for that time in the broker's delay set. Admission
dispatches a job that is first in line at once; after that, every worker's `acquire` dispatches
the next in line as starts free up (as do a lease given back and a dispatched job given up or
withdrawn), and hands their messages back to be enqueued. A worker asks `acquire` whether the
job may start now, else in how many ms (see actors/deferral.py): its time must have come, and
every one of its vendor's limits, its pause, its max_in_flight and its circuit breaker must
allow it. Vendor pushback (a 429, quota headers, an open circuit breaker) pauses or restricts the
vendor for every worker. The jobs in line or waiting for a later start are the vendor's backlog,
which bounds how much work the API accepts and tells how long each job will wait. The state kept
per vendor does not grow with its limits (see ratelimit_lua).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from queueing import ratelimit_lua
from queueing.nodes import run_script_calls
from vendors.registry import Vendor

#: Two quota reports whose reset times differ by less than this describe the same window.
SAME_WINDOW_MS = 1_000
#: A lease outlives its call's timeout by this much: the job's claim and clean-up come before and after.
LEASE_SLACK_MS = 2_000
#: Jobs are dispatched (given their planned start) at most this far ahead of it: long enough for the
#: broker's delay set to bring their messages on time, short enough for a client arriving later
#: to get its turn soon.
DISPATCH_HORIZON_MS = 250


#: The circuit breaker's check as `acquire` runs it: the failures that open it (0: none), a probe's
#: ms, the ms jobs wait while a probe is out (see CircuitBreaker.check_args).
BreakerCheck = tuple[int, int, int]
NO_BREAKER: BreakerCheck = (0, 0, 0)


def vendor_key(vendor_name: str, part: str) -> str:
    """Return a key of a vendor's limiter state; the hash tag keeps them all in one cluster slot."""
    return f"{{vendor:{vendor_name}}}:{part}"


@dataclass(frozen=True)
class NewJob:
    """A job to admit, and what its client's share of the vendor's starts depends on."""

    vendor: Vendor
    request_id: str
    client: str = "public"
    weight: int = 1
    cap: int | None = None  # how many of the client's jobs may wait in the vendor's line


@dataclass(frozen=True)
class Admission:
    """Whether a new job was taken; how long until it starts (or, if refused, until trying again helps)."""

    accepted: bool
    wait_s: float
    delay_ms: int  # how long its message should wait in the delay set, or its expected wait if in line
    refusal: str = ""  # why it was refused
    dispatched: bool = True  # its message is to be enqueued now; else it waits in line for its turn
    by_client: bool = False  # refused by its client's own cap, not by the vendor


@dataclass(frozen=True)
class Dispatched:
    """A job whose turn came: its message is to be enqueued now, due in `delay_ms`."""

    request_id: str
    delay_ms: int
    joined_ms: int  # when it joined the line (Redis server time): its wait counts from then


@dataclass(frozen=True)
class Grant:
    """What `acquire` decided: wait_ms 0 (started), the ms to wait, or None (withdrawn); and the jobs it dispatched."""

    wait_ms: int | None
    dispatched: list[Dispatched]
    by_breaker: bool = False  # the wait is the circuit breaker's, not the limits'
    failures: int = 0  # the breaker's failures counted, as its check saw them (0 if it did not run)


@dataclass(frozen=True)
class Usage:
    """A vendor's limiter state now, for operators."""

    started: int  # jobs started in the last period of the vendor's slowest limit
    backlog: int  # jobs in line or waiting for a later start
    paused_s: float  # how long the vendor stays paused (a 429, an exhausted quota, an open breaker)
    new_job_wait_s: float  # how long a job submitted now would wait for its start


class RateLimiter:
    """Start jobs within each vendor's limits, pause vendors that push back, and bound backlogs."""

    def __init__(self, client: redis.Redis, margin_ms: int, horizon_ms: int = DISPATCH_HORIZON_MS) -> None:
        self.client = client
        # The least slack for uneven delays between a start and its call; see ratelimit_lua.
        self.margin_ms = margin_ms
        self.horizon_ms = horizon_ms
        # register_script only hashes the source; nothing touches the server until first use.
        self.scripts = {
            name: client.register_script(getattr(ratelimit_lua, name))
            for name in ("ACQUIRE", "DISPATCH", "RELEASE", "RESTRICT", "ADMIT", "OUTLOOK", "USAGE", "WITHDRAW", "FORGET")
        }
        self.started = threading.local()  # this thread's latest start: (vendor name, monotonic s)
        self.delays_ms: dict[str, float] = {}  # worst start-to-call delay per vendor, not reported yet
        self.delays_lock = threading.Lock()

    def admit(self, job: NewJob) -> Admission:
        """Put a new job in line (dispatched at once if it is first), unless the vendor's or the client's backlog is full."""
        return self.admit_many([job])[0]

    def admit_many(self, jobs: list[NewJob]) -> list[Admission]:
        """Admit several new jobs, each as `admit` would, in submission order: one script call per vendor, one round trip per node."""
        by_vendor: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            by_vendor.setdefault(job.vendor.name, []).append(index)
        calls = []
        for indexes in by_vendor.values():
            vendor = jobs[indexes[0]].vendor
            each_job = [arg for i in indexes for arg in (jobs[i].request_id, jobs[i].client, jobs[i].weight, jobs[i].cap or 0)]
            calls.append((self.keys(vendor), [*self.limit_args(vendor), vendor.max_backlog, round(vendor.max_wait_s * 1000), *each_job]))
        admissions: dict[int, Admission] = {}
        for indexes, (now_ms, *replies) in zip(by_vendor.values(), self.run_many("ADMIT", calls)):
            for i, outcome, at_ms in zip(indexes, replies[::2], replies[1::2]):
                admissions[i] = self.admission(jobs[i], outcome, now_ms, at_ms)
        return [admissions[i] for i in range(len(jobs))]

    def run_many(self, name: str, calls: list[tuple[list[str], list]]) -> list:
        """Run a script once per (keys, args), one round trip per node; load it where a restarted server lost it."""
        return run_script_calls(self.client, self.scripts[name], calls)

    @staticmethod
    def admission(job: NewJob, outcome: int, now_ms: int, at_ms: int) -> Admission:
        """Read the ADMIT script's reply."""
        wait_s, delay_ms = (at_ms - now_ms) / 1000, RateLimiter.delay_ms(at_ms - now_ms)
        if outcome > 0:
            return Admission(True, wait_s, delay_ms, dispatched=outcome == 1)
        vendor = job.vendor
        refusal = {0: f"{vendor.max_backlog} jobs are waiting already",
                   -1: f"a new job would wait longer than {vendor.max_wait_s:g} s (max_wait_s)",
                   -2: f"client {job.client!r} has {job.cap} jobs waiting for it already"}[outcome]
        return Admission(False, max(wait_s, 0.0), 0, refusal, dispatched=False, by_client=outcome == -2)

    def acquire(self, vendor: Vendor, request_id: str, breaker: BreakerCheck = NO_BREAKER) -> Grant:
        """Start the job now (wait 0), or say how many ms its message should wait before asking again.

        None: the job was withdrawn (`withdraw`) and must not start. With `breaker` (the circuit
        breaker's `check_args`), the start also waits for the vendor's breaker, in the same script
        call. A started job of a vendor with max_in_flight holds a lease until `release`. Whatever
        the answer, the jobs whose turn came meanwhile are dispatched: the caller enqueues their
        messages.
        """
        with self.delays_lock:
            delay_ms = self.delays_ms.pop(vendor.name, -1)
        args = [*self.limit_args(vendor), round(delay_ms), request_id, *breaker]
        wait_ms, by_breaker, failures, *dispatched = self.scripts["ACQUIRE"](keys=self.keys(vendor), args=args)
        if wait_ms < 0:
            return Grant(None, self.dispatched(dispatched))
        if not wait_ms:
            self.started.at = (vendor.name, time.monotonic())
        return Grant(self.delay_ms(wait_ms), self.dispatched(dispatched), bool(by_breaker), failures)

    def dispatch(self, vendor: Vendor) -> list[Dispatched]:
        """Dispatch the jobs in line whose turn has come, in case no worker's `acquire` is left to do it."""
        return self.dispatched(self.scripts["DISPATCH"](keys=self.keys(vendor), args=self.limit_args(vendor)))

    @staticmethod
    def dispatched(reply: list) -> list[Dispatched]:
        """Read the jobs a script dispatched: request_id, ms until its start and when it joined the line, for each."""
        return [Dispatched(reply[i].decode(), RateLimiter.delay_ms(int(reply[i + 1])), int(reply[i + 2]))
                for i in range(0, len(reply), 3)]

    def calling(self, vendor: Vendor) -> None:
        """Note that the job this thread started is calling its vendor now: the delay sets the margin."""
        name, at = getattr(self.started, "at", (None, 0.0))
        if name != vendor.name:
            return
        self.started.at = (None, 0.0)
        delay_ms = (time.monotonic() - at) * 1000
        with self.delays_lock:  # reported with the next acquire for this vendor
            self.delays_ms[vendor.name] = max(delay_ms, self.delays_ms.get(vendor.name, 0.0))

    def release(self, vendor: Vendor, request_id: str) -> list[Dispatched]:
        """Give back the lease of a job whose call ended (or never came); return the jobs dispatched to take it."""
        return self.dispatched(self.scripts["RELEASE"](keys=self.keys(vendor), args=[*self.limit_args(vendor), request_id]))

    def restrict(self, vendor: Vendor, remaining: int, reset_in_s: float) -> None:
        """Allow at most `remaining` more starts in the next `reset_in_s`; 0 pauses the vendor."""
        args = [*self.limit_args(vendor), remaining, round(reset_in_s * 1000), SAME_WINDOW_MS]
        self.scripts["RESTRICT"](keys=self.keys(vendor), args=args)

    def forget(self, vendor: Vendor, request_id: str) -> list[Dispatched]:
        """Take a dispatched job that will not start out of the backlog; return the jobs dispatched in its place (its lease, if any)."""
        return self.dispatched(self.scripts["FORGET"](keys=self.keys(vendor), args=[*self.limit_args(vendor), request_id]))

    def withdraw(self, vendor: Vendor, request_id: str) -> list[Dispatched]:
        """Take a job that must not start (cancelled) out of the line or the backlog; return the jobs dispatched in its place.

        Its message, if one was sent, takes no start when it comes.
        """
        return self.dispatched(self.scripts["WITHDRAW"](keys=self.keys(vendor), args=[*self.limit_args(vendor), request_id]))

    def expected_wait_s(self, vendor: Vendor, request_id: str) -> float:
        """Return how long until the job is expected to start (0 once it is due)."""
        return self.expected_waits_s([(vendor, request_id)])[0]

    def expected_waits_s(self, jobs: list[tuple[Vendor, str]]) -> list[float]:
        """Return `expected_wait_s` of several jobs in one round trip."""
        calls = [(self.keys(vendor), [*self.limit_args(vendor), request_id]) for vendor, request_id in jobs]
        return [(at_ms - now_ms) / 1000 for now_ms, at_ms in self.run_many("OUTLOOK", calls)]

    def usage(self, vendor: Vendor) -> Usage:
        """Report how much of its slowest limit the vendor used in its last period, its backlog and its pause."""
        args = [*self.limit_args(vendor), vendor.limits.index(vendor.limit) + 1]
        started, backlog, paused_ms, wait_ms = self.scripts["USAGE"](keys=self.keys(vendor), args=args)
        return Usage(started, backlog, paused_ms / 1000, wait_ms / 1000)

    def in_line(self, vendor: Vendor) -> dict[str, int]:
        """Return how many jobs each client has waiting in the vendor's line."""
        counts = self.client.hgetall(vendor_key(vendor.name, "fair:clients"))
        return {client.decode(): int(count) for client, count in counts.items()}

    def line(self, vendor: Vendor) -> set[str]:
        """Return the request_ids waiting in the vendor's line: they have no message until their turn."""
        return {request_id.decode() for request_id in self.client.hkeys(vendor_key(vendor.name, "fair:jobs"))}

    @staticmethod
    def delay_ms(wait_ms: int) -> int:
        """Return how long a message should wait for a start `wait_ms` away (0: start now)."""
        return max(wait_ms, 1) if wait_ms > 0 else 0

    def limit_args(self, vendor: Vendor) -> list[int]:
        """Return the scripts' leading arguments: the number of limits, each one's count and period ms, burst, margin,
        horizon, max_in_flight (0: none) and a lease's length."""
        counts_and_periods = [part for count, period_s in vendor.limits for part in (count, round(period_s * 1000))]
        lease_ms = round(vendor.timeout_s * 1000) + LEASE_SLACK_MS
        return [len(vendor.limits), *counts_and_periods, vendor.burst, self.margin_ms, self.horizon_ms, vendor.max_in_flight or 0, lease_ms]

    @staticmethod
    def keys(vendor: Vendor) -> list[str]:
        """Return every key of the vendor's limiter state, in the order the scripts expect."""
        periods = [round(period_s * 1000) for _, period_s in vendor.limits]
        parts = ["state", "waiting", "inflight",
                 *(f"started:{period}" for period in periods), *(f"planned:{period}" for period in periods), "planned:burst",
                 "fair", "fair:jobs", "fair:clients", "fair:finish", "breaker"]
        return [vendor_key(vendor.name, part) for part in parts]
