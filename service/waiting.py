"""Honest waiting: give jobs their place in a vendor's line, or refuse them, and estimate completion.

Everything here reads Redis only (the rate limiter's state), never MongoDB: one pipeline of
script calls for each batch of new jobs (service/intake.py) and one for each batch of reads of
jobs that are not final (service/jobs.py). A job withdrawn from its line may pass its place on:
the messages of the jobs dispatched in its place are queued at once.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import redis

from queueing.messages import send_dispatched
from queueing.ratelimit import Admission, NewJob, RateLimiter
from service.clients.store import Client
from service.errors import BacklogFull, ClientBacklogFull
from service.states import JobStatus
from service.store import utcnow
from vendors.registry import Registry, Vendor

log = logging.getLogger(__name__)

#: Time allowed for the vendor call itself, after the job starts.
CALL_ALLOWANCE_S = 1.0
#: Polling hints stay within these bounds: estimates move as the backlog moves.
MIN_POLL_S, MAX_POLL_S = 1, 60
#: How often to poll a job that waits for its vendor's webhook, which may come at any moment.
WEBHOOK_POLL_S = 5


def poll_hint_s(status: str, estimate: datetime | None) -> int:
    """Return the Retry-After seconds for a job that is not final."""
    if estimate is None:
        return MIN_POLL_S
    until_s = (estimate - utcnow()).total_seconds()
    if status == JobStatus.AWAITING_WEBHOOK.value:
        until_s = min(until_s, WEBHOOK_POLL_S)
    return min(max(math.ceil(until_s), MIN_POLL_S), MAX_POLL_S)


class Waiting:
    """Admit jobs into vendor lines and estimate when jobs will be done."""

    def __init__(self, limiter: RateLimiter, registry: Registry, broker: dramatiq.Broker) -> None:
        self.limiter = limiter
        self.registry = registry
        self.broker = broker

    def admit_many(self, jobs: list[tuple[Client, Vendor, str]]) -> list[Admission]:
        """Give each (client, vendor, request_id) its place in the vendor's line, or a refusal, in one round trip.

        With Redis down the jobs are taken anyway: they are stored as pending and enqueued later.
        """
        try:
            return self.limiter.admit_many([
                NewJob(vendor, request_id, client.name, client.weight, client.backlog_cap(vendor.name))
                for client, vendor, request_id in jobs
            ])
        except redis.RedisError as error:
            log.warning("backlogs not checked, Redis unavailable: %s", type(error).__name__)
            return [Admission(True, 0.0, 0)] * len(jobs)

    def withdraw(self, vendor: Vendor, request_id: str) -> None:
        """Give up the place of a job that will not start (not stored, or cancelled), if Redis allows, to the jobs next in line."""
        try:
            dispatched = self.limiter.withdraw(vendor, request_id)
        except redis.RedisError:
            return  # the slot passes unused; a lease the job held expires
        send_dispatched(self.broker, vendor.name, dispatched)

    def estimate_many(self, jobs: list[dict[str, Any]]) -> list[datetime | None]:
        """Return when each job that is not final should be done (None where that cannot be told now), in one round trip."""
        estimates: list[datetime | None] = [None] * len(jobs)
        asked = []  # (index, vendor) of the jobs whose estimate the limiter knows
        for i, job in enumerate(jobs):
            if job["status"] == JobStatus.AWAITING_WEBHOOK.value:
                estimates[i] = job.get("webhook_deadline")  # the vendor calls back by then at the latest
            elif job["status"] == JobStatus.PROCESSING.value:
                estimates[i] = completion_after(0.0)  # started: the limiter no longer plans it
            elif (vendor := self.registry.get(job["vendor"])) is not None:
                asked.append((i, vendor))
        if asked:
            try:
                waits = self.limiter.expected_waits_s([(vendor, jobs[i]["_id"]) for i, vendor in asked])
            except redis.RedisError:
                return estimates
            for (i, _), wait_s in zip(asked, waits):
                estimates[i] = completion_after(wait_s)
        return estimates


def backlog_full(vendor: Vendor, admission: Admission) -> BacklogFull:
    """Return the error that tells the client why the vendor refused the job, and when to try again."""
    if admission.by_client:
        return ClientBacklogFull(f"vendor {vendor.name!r} takes no more of your work now: {admission.refusal}", admission.wait_s)
    return BacklogFull(f"vendor {vendor.name!r} takes no more work now: {admission.refusal}", admission.wait_s)


def completion_after(wait_s: float) -> datetime:
    """Return the estimated completion of a job that starts in `wait_s` seconds."""
    return utcnow() + timedelta(seconds=max(wait_s, 0.0) + CALL_ALLOWANCE_S)
