"""What the API does with jobs: submit, show, list and cancel a client's own, and complete one from a webhook.

A client sees and acts on its own jobs only: another client's job is JobNotFound, as if it did
not exist.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from queueing.batching import Batch
from service.cleaning import Cleaner
from service.clients.store import Client
from service.errors import IdempotencyInFlight, JobFinished, JobNotFound, UnknownVendor, WebhookTooLate, WebhookWrongVendor
from service.idempotency import IdempotencyKeys
from service.intake import Intake, Submission
from service.listing import ListQuery, encode_cursor
from service.metrics import WEBHOOKS
from service.outcomes import Outcomes
from service.states import JobStatus
from service.store import PUBLIC_CLIENT, JobStore
from service.waiting import Waiting, completion_after
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)

#: How often a cancel tries again when its job moved between its two conditional updates.
CANCEL_TRIES = 3
VISIBLE_FIELDS = ("vendor", "attempts", "error", "removed_keys", "created_at", "updated_at")


def client_view(job: dict[str, Any], estimates: dict[str, datetime | None]) -> dict[str, Any]:
    """Return the fields of a job its client may see, with the completion estimate of an unfinished one."""
    view = {"request_id": job["_id"], "status": job["status"], "result": job.get("result")}
    view.update((name, job[name]) for name in VISIBLE_FIELDS if job.get(name) is not None)
    if job["_id"] in estimates:
        view["estimated_completion_at"] = estimates[job["_id"]]
    return view


def owner_of(job: dict[str, Any]) -> str:
    """Return the name of the job's client; a job stored before clients existed is the public client's."""
    return job.get("client", PUBLIC_CLIENT)


class Jobs:
    """Submit jobs, show them to clients, and accept vendor webhooks."""

    def __init__(
        self, store: JobStore, outcomes: Outcomes, registry: Registry, intake: Intake, cleaner: Cleaner, waiting: Waiting,
        idempotency: IdempotencyKeys,
    ) -> None:
        self.store = store
        self.outcomes = outcomes
        self.registry = registry
        self.intake = intake
        self.cleaner = cleaner
        self.waiting = waiting
        self.idempotency = idempotency
        # Reads by clients are the API's hottest path: those in flight at once share their round trips.
        self._views = Batch(self._views_of)

    def vendor(self, name: str) -> Vendor:
        """Return the registered vendor called `name`, or raise UnknownVendor."""
        vendor = self.registry.get(name)
        if vendor is None:
            raise UnknownVendor(f"no vendor is called {name!r}; known vendors: {', '.join(sorted(self.registry.vendors))}")
        return vendor

    def submit(
        self, client: Client, payload: dict[str, Any], vendor_name: str | None = None, *,
        idempotency_key: str | None = None, callback_url: str | None = None,
    ) -> tuple[str, datetime | None]:
        """Store a job for the pinned or next vendor, enqueue it, and return its request_id and estimated completion.

        The job is stored before it is enqueued. If the queue is down the job is marked pending and
        the scheduler enqueues it later; the client still gets its request_id. A repeated
        Idempotency-Key with the same request returns the first job's request_id (and no estimate).
        """
        pinned = None if vendor_name is None else self.enabled_vendor(vendor_name)
        request_id = str(uuid.uuid4())
        if idempotency_key is not None:
            request = {"payload": payload, "vendor": vendor_name, "callback_url": callback_url}
            earlier = self.idempotency.claim(client.name, idempotency_key, request, request_id)
            if earlier is not None:
                return self.replay(earlier), None
        try:
            document = self.store.new_job(request_id, payload, client=client.name, callback_url=callback_url)
            submission = self.intake(Submission(request_id, client, document, pinned))
        except Exception:
            if idempotency_key is not None:
                self.idempotency.release(client.name, idempotency_key)
            raise
        return request_id, completion_after(submission.admission.wait_s)

    def enabled_vendor(self, name: str) -> Vendor:
        """Return the vendor a job is pinned to, or raise UnknownVendor if it is unknown or disabled."""
        vendor = self.vendor(name)
        if not vendor.enabled:
            raise UnknownVendor(f"vendor {vendor.name!r} is disabled")
        return vendor

    def replay(self, request_id: str) -> str:
        """Return the request_id of the first submission with the same key, once that job is stored."""
        try:
            self.store.get(request_id)
        except JobNotFound:
            raise IdempotencyInFlight(
                "the first request with this Idempotency-Key is still being stored (or failed); retry shortly",
            ) from None
        return request_id

    def view(self, request_id: str, client: str) -> dict[str, Any]:
        """Return what the client may see of its job: never its payload."""
        return self._views((request_id, client))

    def _views_of(self, asked: list[tuple[str, str]]) -> list[dict[str, Any] | Exception]:
        """Show a batch of jobs to their clients: one read for them all, one estimate round trip for the unfinished ones."""
        jobs = [
            job if job is not None and owner_of(job) == client else None
            for job, (_, client) in zip(self.store.find_many([request_id for request_id, _ in asked]), asked)
        ]
        unfinished = [job for job in jobs if job is not None and not JobStatus(job["status"]).is_terminal]
        estimates = dict(zip((job["_id"] for job in unfinished), self.waiting.estimate_many(unfinished)))
        return [
            JobNotFound(request_id) if job is None else client_view(job, estimates)
            for (request_id, _), job in zip(asked, jobs)
        ]

    def page(self, client: str, query: ListQuery) -> dict[str, Any]:
        """Return a page of the client's jobs, newest first, with the cursor of the next page."""
        jobs, next_position = self.store.client_jobs(
            client, created_after=query.created_after, created_before=query.created_before,
            starting_after=query.starting_after, status=query.status, vendor=query.vendor, limit=query.limit,
        )
        return {
            "data": [client_view(job, {}) for job in jobs], "has_more": next_position is not None,
            "next_cursor": None if next_position is None else encode_cursor(next_position),
        }

    def cancel(self, request_id: str, client: str) -> dict[str, Any]:
        """Cancel the client's job unless it already finished otherwise (JobFinished); return what the client sees of it.

        A job whose vendor was not called leaves its vendor's line; the call of a started one finishes
        and what it brings is discarded. Cancelling a cancelled job answers the same again.
        """
        job = self.owned(request_id, client)
        detail = "cancelled by its client"
        # A job may move between the two tries (a webhook overdue is requested again): try while it has not finished.
        for _ in range(CANCEL_TRIES):
            if self.store.cancel_waiting(request_id, detail):
                vendor = self.registry.get(job["vendor"])
                if vendor is not None:
                    self.waiting.withdraw(vendor, request_id)
                break
            if self.store.cancel_started(request_id, detail):
                break
            status = JobStatus(self.store.get(request_id)["status"])
            if status is JobStatus.CANCELLED:
                return self.view(request_id, client)
            if status.is_terminal:
                raise JobFinished(f"job {request_id} is {status.value} already; only a job that has not finished can be cancelled")
        else:
            raise JobFinished(f"job {request_id} kept changing state while being cancelled; try again")
        self.outcomes.finished(request_id, JobStatus.CANCELLED, detail=detail, job=job)
        return self.view(request_id, client)

    def owned(self, request_id: str, client: str) -> dict[str, Any]:
        """Return the client's job (without its payload), or raise JobNotFound."""
        job = self.store.get(request_id)
        if owner_of(job) != client:
            raise JobNotFound(request_id)
        return job

    def receive_webhook(self, vendor: Vendor, request_id: str, data: dict[str, Any]) -> bool:
        """Complete the job with the vendor's data and tell whether it was saved.

        A repeat after completion changes nothing; the data for a cancelled job is acknowledged and discarded.
        """
        try:
            job = self.store.get(request_id)
        except JobNotFound:
            WEBHOOKS.labels(vendor.name, "unknown_job").inc()
            # No job to record it in (never existed, or expired): the log is the record.
            log.warning("webhook from %s for unknown job %s refused", vendor.name, request_id,
                        extra={"request_id": request_id, "vendor": vendor.name})
            raise
        if job["vendor"] != vendor.name:
            self.store.note(request_id, f"webhook refused: sent by {vendor.name!r}, job belongs to {job['vendor']!r}")
            raise WebhookWrongVendor(f"job {request_id} was not sent to vendor {vendor.name!r}")
        result, removed = self.cleaner.clean(data)
        detail = f"webhook from {vendor.name}"
        if self.store.complete(request_id, result, removed, detail=detail):
            WEBHOOKS.labels(vendor.name, "saved").inc()
            self.outcomes.finished(request_id, JobStatus.COMPLETE, detail=detail, job=job)
            return True
        status = self.store.get(request_id)["status"]
        if status == JobStatus.COMPLETE.value:
            WEBHOOKS.labels(vendor.name, "duplicate").inc()
            return True  # a duplicate: the first result stands
        if status == JobStatus.CANCELLED.value:
            WEBHOOKS.labels(vendor.name, "discarded").inc()
            self.store.note(request_id, f"webhook from {vendor.name} after the job was cancelled; its data discarded")
            return False
        # Kept (cleaned) so that an operator can see the data that came too late.
        self.store.note(request_id, f"late webhook from {vendor.name} refused while {status}", late_result=result)
        raise WebhookTooLate(f"job {request_id} is {status}; the webhook was recorded but not applied")
