"""Run one job: claim it, call its vendor, and record what happened."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

import dramatiq
import requests

from actors.deferral import Deferred
from actors.feedback import VendorFeedback
from service.cleaning import Cleaner
from service.errors import UnstorableResult
from service.metrics import VENDOR_LATENCY, VENDOR_REQUESTS
from service.states import JobStatus
from service.store import JobStore, utcnow
from service.webhooks import WebhookAuth
from vendors.client import (
    VendorError, VendorRateLimited, VendorRejected, VendorReply, VendorUnavailable, call_vendor,
)
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)

OUTCOMES = {VendorRejected: "rejected", VendorRateLimited: "rate_limited", VendorUnavailable: "unavailable"}


def backoff_ms(vendor: Vendor, attempts: int) -> int:
    """Return the wait before retrying after `attempts` failed attempts: full jitter, capped."""
    ceiling_s = min(vendor.retry_backoff_max_s, vendor.retry_backoff_s * 2 ** (attempts - 1))
    return round(random.uniform(0, ceiling_s) * 1000)


class JobRunner:
    """Carry a job from queued to complete, awaiting_webhook or failed; safe to run twice."""

    def __init__(
        self, store: JobStore, registry: Registry, session: requests.Session,
        webhook_auth: WebhookAuth, public_url: str, cleaner: Cleaner, feedback: VendorFeedback,
    ) -> None:
        self.store = store
        self.registry = registry
        self.session = session
        self.webhook_auth = webhook_auth
        self.public_url = public_url
        self.cleaner = cleaner
        self.feedback = feedback

    def run(self, request_id: str, message_id: str) -> None:
        """Process the job once; raise Retry to have it retried with backoff, Deferred to have it wait."""
        job = self.store.claim(request_id, message_id)
        if job is None:
            log.info("job %s: nothing to do (already handled or unknown)", request_id)
            return
        vendor = self.registry.get(job["vendor"])
        if vendor is None:
            self.store.fail(request_id, f"vendor {job['vendor']!r} is no longer in the registry")
            return
        try:
            reply = self.call(vendor, request_id, job["payload"])
        except VendorRejected as error:
            self.feedback.answered(vendor, None)
            self.store.fail(request_id, str(error))
            return
        except VendorRateLimited as error:
            pause_s = self.feedback.pushed_back(vendor, error.retry_after_s)
            # Pushback is not the job's failure: give the attempt back.
            self.store.note(request_id, f"{error}; {vendor.name} paused for {pause_s:g} s", inc={"attempts": -1})
            raise Deferred(str(error), round(pause_s * 1000), vendor.name) from error
        except VendorUnavailable as error:
            self.feedback.failed(vendor)
            attempts = job["attempts"]
            if attempts > vendor.max_retries:
                self.store.fail(request_id, f"gave up after {attempts} attempts: {error}")
                return
            delay_ms = backoff_ms(vendor, attempts)
            self.store.note(request_id, f"attempt {attempts} failed: {error}; retrying in {delay_ms / 1000:.1f} s", error=str(error))
            raise dramatiq.Retry(str(error), delay=delay_ms) from error
        self.feedback.answered(vendor, reply.quota)
        if vendor.is_async:
            self.await_webhook(vendor, request_id)
        else:
            result, removed = self.cleaner.clean(reply.data)
            try:
                self.store.complete(request_id, result, removed, detail=f"{vendor.name} answered {reply.status_code}", job=job)
            except UnstorableResult as error:  # calling the vendor again would give the same data
                self.store.fail(request_id, str(error))

    def call(self, vendor: Vendor, request_id: str, payload: dict) -> VendorReply:
        """Call the vendor, counting the outcome and timing the call."""
        started, outcome = time.perf_counter(), "accepted" if vendor.is_async else "ok"
        try:
            return call_vendor(self.session, vendor, request_id, payload, self.callback_url(vendor, request_id))
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

    def await_webhook(self, vendor: Vendor, request_id: str) -> None:
        """Record that the vendor accepted the job; its webhook may already have completed it."""
        deadline = utcnow() + timedelta(seconds=vendor.webhook_timeout_s)
        self.store.transition(
            request_id, JobStatus.AWAITING_WEBHOOK,
            detail=f"{vendor.name} accepted; webhook due by {deadline.isoformat()}",
            fields={"webhook_deadline": deadline},
        )

    def callback_url(self, vendor: Vendor, request_id: str) -> str:
        """Return the URL the vendor calls back, carrying this job's token."""
        token = self.webhook_auth.callback_token(request_id, vendor.name)
        return f"{self.public_url}/vendor-webhook/{vendor.name}?token={token}"
