"""Client callbacks: POST a finished job's status and result to the URL its client gave, signed."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import dramatiq
import orjson
import requests
import standardwebhooks

from queueing.messages import CALLBACK_ACTOR, CALLBACK_QUEUE
from service.states import JobStatus
from service.store import JobStore, utcnow

log = logging.getLogger(__name__)

CALLBACK_TIMEOUT_S = 10
MAX_RETRIES = 10
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 10 * 60_000


class CallbackFailed(Exception):
    """The client's endpoint could not take the callback now; it is retried with backoff."""


def deliver(store: JobStore, session: requests.Session, secret: str, request_id: str) -> None:
    """Send the job's final status and result once; raise CallbackFailed to be retried."""
    job = store.get(request_id)
    url = job.get("callback_url")
    # An operator may have retried the job since this callback was queued: its new outcome will
    # queue one of its own, and a client hears only of final states.
    if not url or job.get("callback_delivered_at") or not JobStatus(job["status"]).is_terminal:
        return
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
    try:
        # No redirects: a client's endpoint must not steer the service to another address.
        response = session.post(url, data=body.encode(), headers=headers, timeout=CALLBACK_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException as error:
        raise CallbackFailed(f"client callback could not be delivered: {type(error).__name__}") from error
    if response.status_code >= 500 or response.status_code == 429:
        raise CallbackFailed(f"client callback answered {response.status_code}")
    if response.status_code >= 300:
        store.note(request_id, f"client callback refused with {response.status_code}; not retried")
        return
    store.note(request_id, "client callback delivered", callback_delivered_at=utcnow())
    log.info("client callback delivered", extra={"request_id": request_id, "state": job["status"]})


def declare_callback_actor(broker: dramatiq.Broker, store: JobStore, session: requests.Session, secret: str) -> dramatiq.Actor:
    """Register the client-callback actor on `broker`."""

    def deliver_client_callback(request_id: str) -> None:
        deliver(store, session, secret, request_id)

    return dramatiq.actor(
        deliver_client_callback, broker=broker, actor_name=CALLBACK_ACTOR, queue_name=CALLBACK_QUEUE,
        max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS,
    )
