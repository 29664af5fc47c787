"""Run one job: claim it, call its vendor, and record what happened."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

import requests

from actors.deferral import Deferred
from actors.feedback import VendorFeedback
from service.cleaning import Cleaner
from service.errors import UnstorableResult
from service.metrics import VENDOR_LATENCY, VENDOR_REQUESTS
from service.outcomes import Outcomes
from service.states import JobStatus
from service.store import JobStore, utcnow
from service.webhooks import WebhookAuth
from vendors.client import VendorError, VendorRateLimited, VendorRejected, VendorReply, VendorUnavailable, call_vendor
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)

OUTCOMES = {VendorRejected: "rejected", VendorRateLimited: "rate_limited", VendorUnavailable: "unavailable"}


def backoff_ms(vendor: Vendor, attempts: int) -> int:
    """Return the wait before retrying after `attempts` failed attempts: full jitter, capped."""
    ceiling_s = min(vendor.retry_backoff_max_s, vendor.retry_backoff_s * 2 ** (attempts - 1))
    return round(random.uniform(0, ceiling_s) * 1000)


class JobRunner:
    """Carry a job from queued to complete, awaiting_webhook or failed; safe to run twice.

    The retry policy lives here: a timeout, connection error or 5xx is a failed attempt, counted
    in the job's `attempts` as it is recorded and retried with backoff up to the vendor's
    max_retries; a 429 is pushback, not an attempt.
    """

    def __init__(
        self, store: JobStore, outcomes: Outcomes, registry: Registry, session: requests.Session,
        webhook_auth: WebhookAuth, public_url: str, cleaner: Cleaner, feedback: VendorFeedback,
    ) -> None:
        self.store = store
        self.outcomes = outcomes
        self.registry = registry
        self.session = session
        self.webhook_auth = webhook_auth
        self.public_url = public_url
        self.cleaner = cleaner
        self.feedback = feedback

    def run(self, request_id: str, message_id: str) -> None:
        """Process the job once; raise Deferred to have its message run again later."""
        job = self.store.claim(request_id, message_id)
        if job is None:
            log.info("job %s: nothing to do (already handled or unknown)", request_id)
            return
        vendor = self.registry.get(job["vendor"])
        if vendor is None:
            self.fail(job, message_id, f"vendor {job['vendor']!r} is no longer in the registry")
            return
        if "payload" not in job:  # erased (a retried job whose payload was not kept): nothing to send
            self.fail(job, message_id, "the job's payload was erased, so it cannot be sent to the vendor again")
            return
        attempt = job["attempts"] + 1
        try:
            reply = self.call(vendor, request_id, job["payload"])
        except VendorRejected as error:
            self.feedback.answered(vendor, None)
            self.fail(job, message_id, str(error), attempt=attempt)
            return
        except VendorRateLimited as error:
            pause_s = self.feedback.pushed_back(vendor, error.retry_after_s)
            self.store.note(request_id, f"{error}; {vendor.name} paused for {pause_s:g} s")
            raise Deferred(str(error), round(pause_s * 1000), vendor.name, "vendor_pushback") from error
        except VendorUnavailable as error:
            self.feedback.failed(vendor)
            if attempt > vendor.max_retries:
                self.fail(job, message_id, f"gave up after {attempt} attempts: {error}", attempt=attempt)
                return
            delay_ms = backoff_ms(vendor, attempt)
            self.store.note(
                request_id, f"attempt {attempt} failed: {error}; retrying in {delay_ms / 1000:.1f} s",
                attempts=attempt, error=str(error),
            )
            raise Deferred(str(error), delay_ms, vendor.name, "retry_backoff") from error
        self.feedback.answered(vendor, reply.quota)
        if vendor.is_async:
            deadline = utcnow() + timedelta(seconds=vendor.webhook_timeout_s)
            detail = f"{vendor.name} accepted; webhook due by {deadline.isoformat()}"
            if not self.store.await_webhook(request_id, deadline, detail=detail, attempt=attempt):
                self.store.record_attempt(request_id, attempt)  # its webhook came first and completed it, or its client cancelled it
            return
        result, removed = self.cleaner.clean(reply.data)
        detail = f"{vendor.name} answered {reply.status_code}"
        try:
            completed = self.store.complete(request_id, result, removed, detail=detail, attempt=attempt)
        except UnstorableResult as error:  # calling the vendor again would give the same data
            self.fail(job, message_id, str(error), attempt=attempt)
            return
        if completed:
            self.outcomes.finished(request_id, JobStatus.COMPLETE, detail=detail, job=job)

    def fail(self, job: dict, message_id: str, reason: str, *, attempt: int | None = None) -> None:
        """Fail the claimed job and report it."""
        if self.store.fail(job["_id"], message_id, reason, attempt=attempt):
            self.outcomes.finished(job["_id"], JobStatus.FAILED, detail=reason, job=job)

    def call(self, vendor: Vendor, request_id: str, payload: dict) -> VendorReply:
        """Call the vendor, counting the outcome and timing the call."""
        started, outcome = time.perf_counter(), "accepted" if vendor.is_async else "ok"
        try:
            callback_url = self.webhook_auth.callback_url(self.public_url, vendor.name, request_id)
            self.feedback.calling(vendor)
            return call_vendor(self.session, vendor, request_id, payload, callback_url)
        except VendorError as error:
            outcome = OUTCOMES[type(error)]
            raise
        finally:
            elapsed_s = time.perf_counter() - started
            VENDOR_REQUESTS.labels(vendor.name, outcome).inc()
            VENDOR_LATENCY.labels(vendor.name).observe(elapsed_s)
            log.info("%s call: %s", vendor.name, outcome, extra={
                "request_id": request_id, "vendor": vendor.name, "outcome": outcome, "duration_ms": round(elapsed_s * 1000, 1),
            })
