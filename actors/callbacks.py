"""Client callbacks: POST a finished job's status and result to the URL its client gave, signed.

A callback is pending from the job's submission until it is delivered (a 2xx). Each attempt is
recorded on the job, with when the next is due; the clock's callback sweep queues a pending
callback again once it is overdue, so a lost message (Redis restarted without its data) never
loses a callback. A callback is given up when its client answers 410 Gone, its address is
refused (service/egress.py), or the schedule runs out, over a day: it then waits, listed on the
dashboard's failures page, for an operator to re-send it.

Each client's callbacks are signed with its own secret (`python -m service.clients rotate NAME
--callback-secret`), or with the service's CALLBACK_SECRET for a client that has none, such as
`public`.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta, timezone

import dramatiq
import orjson
import standardwebhooks

from actors.callback_http import CallbackUnreachable, post_callback
from queueing.messages import CALLBACK_ACTOR, CALLBACK_QUEUE
from service.clients.store import ClientStore
from service.egress import EgressPolicy, EgressRefused
from service.states import JobStatus
from service.store import CALLBACK_GIVEN_UP, JobStore, utcnow
from vendors.client import parse_retry_after

log = logging.getLogger(__name__)

#: A delivery ends this long after it starts, however slowly the client's server answers.
CALLBACK_DEADLINE_S = 10
#: The most of a client's answer read; nothing in it is used but its status.
CALLBACK_MAX_BODY_BYTES = 64 * 1024
#: The waits before each retry (Standard Webhooks' example schedule), each moved by up to JITTER.
RETRY_SCHEDULE_S = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
JITTER = 0.1
#: A client's Retry-After is honoured up to this.
MAX_RETRY_AFTER_S = 24 * 3600
#: Bounds retries of errors of our own (a data store down), not of the client's endpoint.
MAX_RETRIES = 10
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 10 * 60_000


def deliver(store: JobStore, policy: EgressPolicy, clients: ClientStore, service_secret: str, request_id: str) -> None:
    """Try to send the job's final status and result once; raise dramatiq.Retry for the next attempt."""
    job = store.get(request_id)
    url = job.get("callback_url")
    # An operator may have retried the job since this callback was queued: its new outcome will
    # queue one of its own, and a client hears only of final states.
    given_up = job.get("callback_due_at") == CALLBACK_GIVEN_UP  # until an operator re-sends it
    if not url or not job.get("callback_pending") or given_up or not JobStatus(job["status"]).is_terminal:
        return
    attempt = job.get("callback_attempts", 0) + 1
    body, headers = signed_callback(clients.callback_secret(job.get("client")) or service_secret, request_id, job)
    try:
        answer = post_callback(url, body, headers, policy, CALLBACK_DEADLINE_S, CALLBACK_MAX_BODY_BYTES)
    except EgressRefused as error:
        store.callback_attempted(job, attempt, f"client callback refused: {error}; not retried")
        log.warning("client callback refused: %s", error, extra={"request_id": request_id})
        return
    except CallbackUnreachable as error:
        outcome, retry_after_s = str(error), None
    else:
        if 200 <= answer.status < 300:
            store.callback_attempted(job, attempt, "client callback delivered", delivered=True)
            log.info("client callback delivered", extra={"request_id": request_id, "state": job["status"]})
            return
        if answer.status == 410:
            store.callback_attempted(job, attempt, "client callback answered 410 Gone; not retried")
            return
        outcome, retry_after_s = f"client callback answered {answer.status}", parse_retry_after(answer.retry_after)
    if attempt > len(RETRY_SCHEDULE_S):
        store.callback_attempted(job, attempt, f"{outcome}; gave up after {attempt} attempts")
        log.warning("client callback given up: %s", outcome, extra={"request_id": request_id})
        return
    wait_s = retry_wait_s(attempt, retry_after_s)
    next_at = utcnow() + timedelta(seconds=wait_s)
    # Only the delivery that recorded this attempt schedules the next: a duplicate stops here.
    if store.callback_attempted(job, attempt, f"{outcome} (attempt {attempt}); next in {wait_s:.0f} s", next_at=next_at):
        raise dramatiq.Retry(outcome, delay=round(wait_s * 1000))


def retry_wait_s(attempt: int, retry_after_s: float | None) -> float:
    """Return the wait after failed attempt `attempt`: the schedule's, jittered, or the client's Retry-After if longer."""
    scheduled_s = RETRY_SCHEDULE_S[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
    return max(scheduled_s, min(retry_after_s or 0.0, MAX_RETRY_AFTER_S))


def signed_callback(secret: str, request_id: str, job: dict) -> tuple[bytes, dict[str, str]]:
    """Return the callback's body and its Standard Webhooks headers."""
    body = orjson.dumps({
        "request_id": request_id, "status": job["status"], "result": job.get("result"), "error": job.get("error"),
    }).decode()
    # The webhook-id stays the same on every attempt, so the client can drop duplicates; an
    # operator's retry of the job makes a new outcome, with an id of its own.
    webhook_id = f"msg_{request_id}" + (f"_{job['retries']}" if job.get("retries") else "")
    now = datetime.now(timezone.utc)
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": standardwebhooks.Webhook(secret).sign(webhook_id, now, body),
    }
    return body.encode(), headers


def declare_callback_actor(
    broker: dramatiq.Broker, store: JobStore, policy: EgressPolicy, clients: ClientStore, service_secret: str,
) -> dramatiq.Actor:
    """Register the client-callback actor on `broker`."""

    def deliver_client_callback(request_id: str) -> None:
        deliver(store, policy, clients, service_secret, request_id)

    return dramatiq.actor(
        deliver_client_callback, broker=broker, actor_name=CALLBACK_ACTOR, queue_name=CALLBACK_QUEUE,
        max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS,
    )
