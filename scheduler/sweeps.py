"""Sweeps the clock runs: each finds stuck jobs in bounded batches and moves them on.

Every change goes through the job store's conditional transitions, so a sweep racing a worker,
a webhook or another clock never moves a job twice.
"""

from __future__ import annotations

import functools
import itertools
from datetime import timedelta

from queueing.broker import StreamsBroker
from queueing.messages import (
    CALLBACK_ACTOR, CALLBACK_QUEUE, FETCH_ACTOR, QUEUE_NAME, enqueue_client_callback, enqueue_dispatched, enqueue_fetch,
    request_id_of,
)
from queueing.ratelimit import RateLimiter
from service.logs import about_job
from service.outcomes import Outcomes
from service.states import JobStatus
from service.store import JobStore
from vendors.registry import Registry

BATCH_SIZE = 500
LOST_MESSAGE_NOTES = {
    JobStatus.QUEUED: "message lost; enqueued again by the orphan sweep",
    JobStatus.PROCESSING: "message lost while processing; redelivered by the orphan sweep",
}


def request_ids_in_queue(broker: StreamsBroker, queue_name: str = QUEUE_NAME, actor_name: str = FETCH_ACTOR) -> set[str]:
    """Return the request_ids that have a message of `actor_name` in a queue, delayed or in the stream."""
    return {request_id for message in broker.queued_messages(queue_name) if (request_id := request_id_of(message, actor_name))}


def time_out_webhooks(
    store: JobStore, outcomes: Outcomes, registry: Registry, broker: StreamsBroker, limit: int = BATCH_SIZE,
) -> dict[str, int]:
    """Ask the vendor again, or time out, async jobs whose webhook is overdue; return the counts."""
    counts = {"re_requested": 0, "timed_out": 0}
    for job in store.overdue_webhooks(limit):
        request_id, rerequests = job["_id"], job.get("rerequests", 0)
        with about_job(request_id, job["vendor"]):
            vendor = registry.get(job["vendor"])
            allowed = vendor.webhook_retries if vendor else 0
            if rerequests < allowed:
                detail = f"no webhook from {job['vendor']} by the deadline; asking again ({rerequests + 1} of {allowed})"
                # Queued first, then enqueued: a worker must find the job claimable when the message arrives.
                if store.rerequest(request_id, detail):
                    enqueue_fetch(broker, request_id, vendor=job["vendor"])
                    counts["re_requested"] += 1
                continue
            asked = f" after {rerequests + 1} requests" if rerequests else ""
            reason = f"no webhook from {job['vendor']} by {job['webhook_deadline'].isoformat(timespec='seconds')}{asked}"
            if store.time_out(request_id, reason):
                outcomes.finished(request_id, JobStatus.TIMED_OUT, detail=reason, job=job)
                counts["timed_out"] += 1
    return counts


def waiting_for_a_turn(limiter: RateLimiter, registry: Registry) -> set[str]:
    """Return the request_ids in every vendor's line: they have no message until their turn comes."""
    return set().union(*(limiter.line(vendor) for vendor in registry.vendors.values()))


def dispatch_waiting(limiter: RateLimiter, registry: Registry, broker: StreamsBroker) -> dict[str, int]:
    """Dispatch the jobs in line whose turn came where no worker did (none had a start to pass it on); return the count."""
    count = 0
    for vendor in registry.vendors.values():
        dispatched = limiter.dispatch(vendor)
        enqueue_dispatched(broker, vendor.name, dispatched)
        count += len(dispatched)
    return {"dispatched": count}


def requeue_orphans(
    store: JobStore, registry: Registry, broker: StreamsBroker, limiter: RateLimiter, orphan_after: timedelta,
    limit: int = BATCH_SIZE,
) -> dict[str, int]:
    """Enqueue again the jobs whose message is gone from the queue; return the counts by state.

    A pending job is a candidate once unchanged for `orphan_after`, a queued one once its start
    (`due_at`: its slot, or its expected turn) is `orphan_after` past and it is not in its
    vendor's line, and a processing job once unchanged for the broker's visibility timeout plus
    the longest vendor timeout, since until then a live worker may still hold its message. Every
    candidate is looked at, most overdue first, so a long queue cannot hide a younger orphan; at
    most `limit` orphans of each state are handled.
    """
    longest_call_s = max(vendor.timeout_s for vendor in registry.vendors.values())
    thresholds = {
        JobStatus.PENDING: orphan_after,
        JobStatus.QUEUED: orphan_after,
        JobStatus.PROCESSING: timedelta(milliseconds=broker.visibility_timeout_ms, seconds=longest_call_s),
    }
    # Read the queue only once some job is old enough to be a candidate: most runs find none.
    # The lines first: a job dispatched between the two reads is then found in the queue, unless its
    # message is still on its way (it gets a second one, whose claim is refused).
    in_queue = functools.cache(lambda: waiting_for_a_turn(limiter, registry) | request_ids_in_queue(broker))
    orphans = {
        status: list(itertools.islice((i for i in store.stale_ids(status, age, limit) if i not in in_queue()), limit))
        for status, age in thresholds.items()
    }
    if any(orphans.values()):
        # Look again: a message moving from the stream to the delay set (a retry) can slip past one look.
        still_queued = request_ids_in_queue(broker)
        orphans = {status: [i for i in ids if i not in still_queued] for status, ids in orphans.items()}
    for request_id in orphans[JobStatus.PENDING]:
        enqueue_fetch(broker, request_id)
        store.mark_queued(request_id, "enqueued by the orphan sweep")
    counts = {JobStatus.PENDING.value: len(orphans[JobStatus.PENDING])}
    for status, detail in LOST_MESSAGE_NOTES.items():
        # Only a job nobody touched since it was found: a worker may have just taken and finished it.
        renewed = [i for i in orphans[status] if store.renew_if_stale(i, status, thresholds[status], detail)]
        for request_id in renewed:
            # For a processing job the same message id makes it a redelivery, which may re-claim the job.
            message_id = store.get(request_id).get("message_id") if status is JobStatus.PROCESSING else None
            enqueue_fetch(broker, request_id, message_id)
        counts[status.value] = len(renewed)
    return counts


def queue_missed_callbacks(store: JobStore, broker: StreamsBroker, overdue_by: timedelta, limit: int = BATCH_SIZE) -> dict[str, int]:
    """Queue again the pending client callbacks overdue by `overdue_by`: never queued (Redis was down) or their message lost."""
    request_ids = store.overdue_callback_ids(overdue_by, limit)
    if request_ids:  # a callback still in the queue is only late: a backlog behind slow endpoints
        queued = request_ids_in_queue(broker, CALLBACK_QUEUE, CALLBACK_ACTOR)
        request_ids = [request_id for request_id in request_ids if request_id not in queued]
    for request_id in request_ids:
        store.mark_callback_queued(request_id)
        enqueue_client_callback(broker, request_id)
    return {"queued": len(request_ids)}


def purge_expired_jobs(store: JobStore, limit: int = BATCH_SIZE) -> dict[str, int]:
    """Delete finished jobs whose retention has ended, at most `limit` a run."""
    return {"deleted": store.purge_expired(limit)}
