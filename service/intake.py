"""Take in new jobs in batches: the submissions in flight at once share their round trips.

A submission needs a place in its vendor's line (Redis), its document stored (MongoDB), then,
if its turn came at once, its message in the queue (Redis), in that order: a worker must find
the job when the message comes. Every submission waiting when a batch starts goes through the
three steps together, one round trip each (queueing/batching.py), so under load the cost per job
falls as batches grow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pymongo.errors
import redis
from dramatiq.errors import ConnectionClosed

from queueing.batching import Batch
from queueing.broker import StreamsBroker
from queueing.messages import fetch_message
from queueing.ratelimit import Admission
from service.clients.store import Client
from service.metrics import JOBS_SUBMITTED
from service.store import JobStore, utcnow
from service.waiting import Waiting, backlog_full
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)


@dataclass
class Submission:
    """A new job on its way in: its client, its document, the vendor it is pinned to (if any), and what became of it."""

    request_id: str
    client: Client
    document: dict[str, Any]  # from JobStore.new_job; its vendor and start are set once one admits the job
    pinned: Vendor | None = None
    vendor: Vendor | None = None
    admission: Admission | None = None
    error: Exception | None = None


class Intake:
    """Admit, store and enqueue new jobs, sharing each step's round trip with the others in flight."""

    def __init__(self, store: JobStore, registry: Registry, waiting: Waiting, broker: StreamsBroker) -> None:
        self.store = store
        self.registry = registry
        self.waiting = waiting
        self.broker = broker
        self._batch = Batch(self._take_in)

    def __call__(self, submission: Submission) -> Submission:
        """Take the job in and return it admitted, stored and enqueued (or pending); raise what kept it out."""
        return self._batch(submission)

    def _take_in(self, submissions: list[Submission]) -> list[Submission | Exception]:
        self._admit(submissions)
        self._store([s for s in submissions if s.error is None])
        self._enqueue([s for s in submissions if s.error is None])
        return [s.error or s for s in submissions]

    def _admit(self, submissions: list[Submission]) -> None:
        """Give each job a slot with its pinned vendor, or with the next vendor in turn that has room."""
        for submission in submissions:
            submission.vendor = submission.pinned or self.registry.choose()
        admissions = self.waiting.admit_many([(s.client, s.vendor, s.request_id) for s in submissions])
        for submission, admission in zip(submissions, admissions):
            submission.admission = admission
            if not admission.accepted and submission.pinned is None:
                self._admit_elsewhere(submission)
            if not submission.admission.accepted:
                submission.error = backlog_full(submission.vendor, submission.admission)

    def _admit_elsewhere(self, submission: Submission) -> None:
        """Try the other enabled vendors in turn for a job its first vendor refused (a full backlog)."""
        for vendor in self.registry.others_after(submission.vendor):
            [admission] = self.waiting.admit_many([(submission.client, vendor, submission.request_id)])
            submission.vendor, submission.admission = vendor, admission
            if admission.accepted:
                return

    def _store(self, submissions: list[Submission]) -> None:
        """Insert the admitted jobs; a job that could not be stored gives its slot up."""
        if not submissions:
            return
        now = utcnow()
        for submission in submissions:
            starts_in = timedelta(milliseconds=submission.admission.delay_ms)
            submission.document.update(vendor=submission.vendor.name, due_at=now + starts_in)
        try:
            errors = self.store.insert_many([s.document for s in submissions])
        except pymongo.errors.PyMongoError as error:  # MongoDB is down, say: none of them was stored
            errors = [error] * len(submissions)
        for submission, error in zip(submissions, errors):
            submission.error = error
        # Those still in line leave it first: withdrawing a dispatched one dispatches the next in
        # line, which must not be another job that was not stored.
        for submission in sorted((s for s in submissions if s.error is not None), key=lambda s: s.admission.dispatched):
            self.waiting.withdraw(submission.vendor, submission.request_id)

    def _enqueue(self, submissions: list[Submission]) -> None:
        """Queue the stored jobs whose turn came at once, each due at its slot; if the queue is down, leave them pending.

        The clock's orphan sweep enqueues a pending job later. A job left in its vendor's line gets
        its message when its turn comes (queueing/ratelimit.py).
        """
        if not submissions:
            return
        for submission in submissions:
            JOBS_SUBMITTED.labels(submission.vendor.name).inc()
        dispatched = [s for s in submissions if s.admission.dispatched]
        try:
            self.broker.enqueue_many([
                (fetch_message(s.request_id, vendor=s.vendor.name), s.admission.delay_ms)
                for s in dispatched
            ])
        except (ConnectionClosed, redis.RedisError) as error:  # Redis is down, say: the clock's orphan sweep takes over
            log.warning("enqueue failed for %d jobs, left pending: %r", len(dispatched), error)
            for submission in dispatched:
                self._leave_pending(submission, f"enqueue failed: {type(error).__name__}")
            return
        for submission in submissions:
            log.info("job queued", extra={
                "request_id": submission.request_id, "vendor": submission.vendor.name, "state": "queued",
                "starts_in_ms": submission.admission.delay_ms,
            })

    def _leave_pending(self, submission: Submission, detail: str) -> None:
        try:
            self.store.leave_pending(submission.request_id, detail)
        except pymongo.errors.PyMongoError as error:  # it is stored as queued all the same: the orphan sweep enqueues it
            log.warning("job left queued without a message: %r", error, extra={"request_id": submission.request_id})
