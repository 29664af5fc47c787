"""Defer fetch messages instead of blocking a thread or spending a retry.

Before a fetch runs, `VendorGate` asks the rate limiter for a start, which the vendor's circuit
breaker must also allow, and enqueues the messages of the jobs the limiter dispatched meanwhile
(their turn came). Without a start, the message goes back to the broker's delay set for exactly
the wait and is skipped (acknowledged) here: no thread sleeps, no retry is spent, the job is
never claimed, so the wait is not an attempt. A job that would wait past its vendor's
`max_wait_s` fails instead. A start for a vendor with max_in_flight holds a lease, given back
when the message is done with, whatever the outcome; that dispatches the next job in line, which
holds the lease until it starts.
A vendor's 429, and the backoff after a failed attempt, reach the actor as `Deferred`, which
re-enqueues the same way: Dramatiq's Retries middleware is left only the unexpected errors.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import dramatiq
import pymongo.errors
import redis
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage

from queueing.breaker import CircuitBreaker
from queueing.messages import FETCH_ACTOR, send_dispatched
from queueing.ratelimit import RateLimiter
from service.errors import JobNotFound
from service.logs import about_job
from service.metrics import DEFERRALS
from service.outcomes import Outcomes
from service.states import JobStatus
from service.store import JobStore, utcnow
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)


class Deferred(Exception):
    """The job's message must run again in `delay_ms` (`cause`: vendor_pushback or retry_backoff)."""

    def __init__(self, reason: str, delay_ms: int, vendor: str, cause: str) -> None:
        super().__init__(reason)
        self.delay_ms = delay_ms
        self.vendor = vendor
        self.cause = cause


class GateUnavailable(MiddlewareError):
    """The limits could not be checked (Redis or MongoDB is down); the message is retried like a failure."""


def defer(broker: dramatiq.Broker, message: dramatiq.Message, delay_ms: int, vendor: str, reason: str) -> None:
    """Put the message back in its queue, due in `delay_ms`, and count why it waits."""
    broker.enqueue(message, delay=max(delay_ms, 1))
    DEFERRALS.labels(vendor, reason).inc()


def waited_s(message: dramatiq.Message) -> float:
    """Return how long the message's job has waited: a job's message is dated when it began to wait."""
    return (current_millis() - message.message_timestamp) / 1000


class SkippedDeferrals(logging.Filter):
    """Drop dramatiq's per-message "was skipped" warning: deferrals are routine, and logged here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("was skipped.")


class VendorGate(Middleware):
    """Let a fetch through only when its vendor has capacity and its circuit is not open."""

    def __init__(
        self, registry: Registry, limiter: RateLimiter, breaker: CircuitBreaker, store: JobStore, outcomes: Outcomes,
    ) -> None:
        self.registry = registry
        self.limiter = limiter
        self.breaker = breaker
        self.store = store
        self.outcomes = outcomes
        self.leases: dict[str, tuple[Vendor, str]] = {}  # message_id -> (vendor, request_id) of a lease held

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(SkippedDeferrals())

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if message.actor_name != FETCH_ACTOR:
            return
        try:
            vendor = self.vendor_of(message)
            if vendor is None:
                return  # an unknown job or vendor: the runner finds nothing to do and says so
            with about_job(message.args[0], vendor.name):
                if waited_s(message) > vendor.max_wait_s:  # its turn in the vendor's line came that late
                    self.give_up(broker, message, vendor, f"its turn came after max_wait_s ({vendor.max_wait_s:g} s)")
                grant = self.limiter.acquire(vendor, message.args[0], self.breaker.check_args(vendor))
                self.breaker.saw(vendor, grant.failures)
                send_dispatched(broker, vendor.name, grant.dispatched)
                if grant.wait_ms is None:  # its job was cancelled while it waited: nothing is left to do
                    raise SkipMessage("withdrawn")
                if grant.wait_ms:
                    reason = "breaker_open" if grant.by_breaker else "rate_limit"
                    self.wait_or_give_up(broker, message, vendor, grant.wait_ms, reason)
                if vendor.max_in_flight:
                    self.leases[message.message_id] = (vendor, message.args[0])
        except MiddlewareError:
            raise
        except Exception as error:
            # Dramatiq logs and ignores any other error here, which would let the call through unchecked.
            raise GateUnavailable(f"cannot check the vendor's limits: {type(error).__name__}: {error}") from error

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: object = None, exception: BaseException | None = None,
    ) -> None:
        self.release(broker, message)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.release(broker, message)

    def release(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        """Give back the lease the message's start took, if any, and enqueue the job dispatched to take it.

        A lease Redis cannot take back expires, and the clock then dispatches the next job.
        """
        lease = self.leases.pop(message.message_id, None)
        if lease is None:
            return
        vendor, request_id = lease
        try:
            dispatched = self.limiter.release(vendor, request_id)
        except redis.RedisError as error:
            log.warning("job %s: lease not given back, it expires: %s", request_id, type(error).__name__)
            return
        send_dispatched(broker, vendor.name, dispatched)

    def wait_or_give_up(
        self, broker: dramatiq.Broker, message: dramatiq.Message, vendor: Vendor, wait_ms: int, reason: str,
    ) -> None:
        """Defer the message by `wait_ms`, or fail its job if it would wait past max_wait_s; skip it."""
        request_id = message.args[0]
        if waited_s(message) + wait_ms / 1000 <= vendor.max_wait_s:
            log.debug("job %s waits %d ms for %s", request_id, wait_ms, vendor.name)
            message.options["vendor"] = vendor.name
            self.postpone(request_id, wait_ms)
            defer(broker, message, wait_ms, vendor.name, reason)
            raise SkipMessage("deferred")
        why = "its circuit breaker is open" if self.breaker.tripped(vendor) else "it is paused or at its rate limit"
        self.give_up(broker, message, vendor, f"{why} for {wait_ms / 1000:.0f} s more, beyond max_wait_s ({vendor.max_wait_s:g} s)")

    def give_up(self, broker: dramatiq.Broker, message: dramatiq.Message, vendor: Vendor, why: str) -> None:
        """Fail the message's job, which waited or would wait past its vendor's max_wait_s, pass its lease on; skip the message."""
        request_id = message.args[0]
        reason = f"gave up after waiting {waited_s(message):.0f} s for {vendor.name}: {why}"
        log.warning("job %s: %s", request_id, reason)
        if self.store.fail(request_id, message.message_id, reason):
            self.outcomes.finished(request_id, JobStatus.FAILED, detail=reason)
        send_dispatched(broker, vendor.name, self.limiter.forget(vendor, request_id))
        raise SkipMessage("gave up")

    def postpone(self, request_id: str, wait_ms: int) -> None:
        """Tell the store when a queued job's deferred message comes due, so the orphan sweep does not look for it before."""
        try:
            self.store.postpone(request_id, utcnow() + timedelta(milliseconds=wait_ms))
        except pymongo.errors.PyMongoError as error:  # the sweep then reads the queue to find the message
            log.warning("job %s: start not postponed: %s", request_id, type(error).__name__)

    def vendor_of(self, message: dramatiq.Message) -> Vendor | None:
        """Return the job's vendor: named in the message, or else read from the job once."""
        name = message.options.get("vendor")
        if name is None:
            try:
                name = self.store.get(message.args[0])["vendor"]
            except JobNotFound:
                return None
        return self.registry.get(name)
