"""The queues and the messages every process enqueues: fetch a job, deliver a client callback."""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.errors import ConnectionClosed

from queueing.ratelimit import Dispatched

log = logging.getLogger(__name__)

QUEUE_NAME = "job-queue"
FETCH_ACTOR = "fetch_job"
CALLBACK_QUEUE = "client-callbacks"
CALLBACK_ACTOR = "deliver_client_callback"


def fetch_message(
    request_id: str, message_id: str | None = None, *, vendor: str | None = None, since_ms: int | None = None,
) -> dramatiq.Message:
    """Return the message that has a worker fetch the job: it carries the request_id.

    Given the message_id of the message that claimed the job, the new message is a redelivery of
    it and may re-claim the job (the orphan sweep uses this for a processing job whose message was lost).
    The vendor's name (not sensitive), if given, spares the rate limiter a MongoDB read per message.
    `since_ms`, when the job began to wait (it joined its vendor's line), dates the message: the
    gate counts the job's wait against max_wait_s from it.
    """
    identity = {"message_id": message_id} if message_id else {}
    if since_ms is not None:
        identity["message_timestamp"] = since_ms
    options = {"vendor": vendor} if vendor else {}
    return dramatiq.Message(
        queue_name=QUEUE_NAME, actor_name=FETCH_ACTOR, args=(request_id,), kwargs={}, options=options, **identity,
    )


def enqueue_fetch(
    broker: dramatiq.Broker, request_id: str, message_id: str | None = None, *, vendor: str | None = None, delay_ms: int = 0,
) -> None:
    """Queue the job for a worker, due in `delay_ms` (its rate-limit slot); see fetch_message."""
    broker.enqueue(fetch_message(request_id, message_id, vendor=vendor), delay=delay_ms)


def enqueue_dispatched(broker: dramatiq.Broker, vendor: str, dispatched: list[Dispatched]) -> None:
    """Queue the messages of a vendor's jobs whose turn came, each due at its planned start, in one round trip."""
    if dispatched:
        broker.enqueue_many([(fetch_message(job.request_id, vendor=vendor, since_ms=job.joined_ms), job.delay_ms) for job in dispatched])


def send_dispatched(broker: dramatiq.Broker, vendor: str, dispatched: list[Dispatched]) -> None:
    """Enqueue the messages of a vendor's jobs whose turn came; if Redis fails here, the orphan sweep finds them."""
    try:
        enqueue_dispatched(broker, vendor, dispatched)
    except (ConnectionClosed, redis.RedisError) as error:
        log.warning("%d jobs dispatched for %s not enqueued: %s", len(dispatched), vendor, type(error).__name__)


def request_id_of(message: dramatiq.Message | None, actor_name: str = FETCH_ACTOR) -> str | None:
    """Return the request_id a message for `actor_name` carries, or None for any other message (or none)."""
    return message.args[0] if message and message.actor_name == actor_name and message.args else None


def enqueue_client_callback(broker: dramatiq.Broker, request_id: str) -> None:
    """Queue the client callback of a finished job."""
    broker.enqueue(dramatiq.Message(
        queue_name=CALLBACK_QUEUE, actor_name=CALLBACK_ACTOR, args=(request_id,), kwargs={}, options={},
    ))
