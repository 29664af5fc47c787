"""What the API does with jobs: submit one, show one, and complete one from a webhook."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

from service.cleaning import Cleaner
from service.errors import UnknownVendor, WebhookTooLate, WebhookWrongVendor
from service.states import JobStatus
from service.store import JobStore
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)

VISIBLE_FIELDS = ("vendor", "attempts", "error", "removed_keys", "created_at", "updated_at")


class Jobs:
    """Submit jobs, show them to clients, and accept vendor webhooks."""

    def __init__(self, store: JobStore, registry: Registry, enqueue: Callable[[str], None], cleaner: Cleaner) -> None:
        self.store = store
        self.registry = registry
        self.enqueue = enqueue
        self.cleaner = cleaner

    def vendor(self, name: str) -> Vendor:
        """Return the registered vendor called `name`, or raise UnknownVendor."""
        vendor = self.registry.get(name)
        if vendor is None:
            raise UnknownVendor(f"no vendor is called {name!r}; known vendors: {', '.join(sorted(self.registry.vendors))}")
        return vendor

    def submit(self, payload: dict[str, Any], vendor_name: str | None = None) -> str:
        """Store a job for the pinned or next vendor, enqueue it, and return its request_id.

        The job is stored before it is enqueued. If the queue is down the job is marked pending and
        the scheduler enqueues it later; the client still gets its request_id.
        """
        vendor = self.vendor(vendor_name) if vendor_name else self.registry.choose()
        if not vendor.enabled:
            raise UnknownVendor(f"vendor {vendor.name!r} is disabled")
        request_id = str(uuid.uuid4())
        self.store.create(request_id, vendor.name, payload)
        try:
            self.enqueue(request_id)
        except Exception as error:  # any broker failure: the scheduler's pending sweep takes over
            log.warning("enqueue failed for %s, left pending: %s", request_id, type(error).__name__)
            self.store.transition(
                request_id, JobStatus.PENDING, detail=f"enqueue failed: {type(error).__name__}",
                allowed_from=frozenset({JobStatus.QUEUED}),
            )
        return request_id

    def view(self, request_id: str) -> dict[str, Any]:
        """Return what a client may see of a job: never its payload."""
        job = self.store.get(request_id)
        view = {"request_id": job["_id"], "status": job["status"], "result": job.get("result")}
        view.update((name, job[name]) for name in VISIBLE_FIELDS if job.get(name) is not None)
        return view

    def receive_webhook(self, vendor: Vendor, request_id: str, data: dict[str, Any]) -> None:
        """Complete the job with the vendor's data; a repeat after completion changes nothing."""
        job = self.store.get(request_id)
        if job["vendor"] != vendor.name:
            self.store.note(request_id, f"webhook refused: sent by {vendor.name!r}, job belongs to {job['vendor']!r}")
            raise WebhookWrongVendor(f"job {request_id} was not sent to vendor {vendor.name!r}")
        result, removed = self.cleaner.clean(data)
        if self.store.complete(request_id, result, removed, detail=f"webhook from {vendor.name}"):
            return
        status = self.store.get(request_id)["status"]
        if status == JobStatus.COMPLETE.value:
            return  # a duplicate: the first result stands
        self.store.note(request_id, f"late webhook from {vendor.name} refused while {status}")
        raise WebhookTooLate(f"job {request_id} is {status}; the webhook was recorded but not applied")
