"""Honest waiting: give jobs their slot in a vendor's backlog, or refuse them, and estimate completion.

Everything here reads Redis only (the rate limiter's state), never MongoDB: one pipeline of
script calls for each batch of new jobs (service/intake.py) and one for each batch of reads of
jobs that are not final (service/jobs.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from queueing.ratelimit import Admission, RateLimiter
from service.clients.backlogs import ClientBacklogs
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


@dataclass(frozen=True)
class OverClientCap(Admission):
    """A refusal by the client's own cap on its jobs waiting for the vendor, not by the vendor's backlog."""


class Waiting:
    """Admit jobs into vendor backlogs and estimate when jobs will be done."""

    def __init__(self, limiter: RateLimiter, registry: Registry, backlogs: ClientBacklogs) -> None:
        self.limiter = limiter
        self.registry = registry
        self.backlogs = backlogs

    def admit_many(self, jobs: list[tuple[Client, Vendor, str]]) -> list[Admission]:
        """Give each (client, vendor, request_id) its slot in the vendor's backlog, or a refusal.

        A client's own cap on its jobs waiting for the vendor is checked first (one round trip,
        only for clients with a cap), then the vendor's backlog (one round trip). With Redis down
        the jobs are taken anyway: they are stored as pending and enqueued later.
        """
        try:
            over_cap = self.backlogs.reserve_many(jobs)
            asked = [(vendor, request_id) for (_, vendor, request_id), wait_s in zip(jobs, over_cap) if wait_s is None]
            slots = iter(self.limiter.admit_many(asked) if asked else [])
            admissions = [
                next(slots) if wait_s is None else OverClientCap(
                    False, wait_s, 0, f"client {client.name!r} has {client.backlog_cap(vendor.name)} jobs waiting for it already",
                )
                for (client, vendor, _), wait_s in zip(jobs, over_cap)
            ]
            self.backlogs.settle_many([
                (client, vendor, request_id, admission.wait_s if admission.accepted else None)
                for (client, vendor, request_id), admission, wait_s in zip(jobs, admissions, over_cap) if wait_s is None
            ])
            return admissions
        except redis.RedisError as error:
            log.warning("backlogs not checked, Redis unavailable: %s", type(error).__name__)
            return [Admission(True, 0.0, 0)] * len(jobs)

    def withdraw(self, vendor: Vendor, request_id: str, client_name: str) -> None:
        """Give up the slot of a job that will not start (not stored, or cancelled), if Redis allows."""
        try:
            self.limiter.withdraw(vendor, request_id)
            self.backlogs.release(client_name, vendor.name, request_id)
        except redis.RedisError:
            pass  # the slot passes unused

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
    if isinstance(admission, OverClientCap):
        return ClientBacklogFull(f"vendor {vendor.name!r} takes no more of your work now: {admission.refusal}", admission.wait_s)
    return BacklogFull(f"vendor {vendor.name!r} takes no more work now: {admission.refusal}", admission.wait_s)


def completion_after(wait_s: float) -> datetime:
    """Return the estimated completion of a job that starts in `wait_s` seconds."""
    return utcnow() + timedelta(seconds=max(wait_s, 0.0) + CALL_ALLOWANCE_S)
