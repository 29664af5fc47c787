"""The job queue's name and the one message it carries: fetch this request_id."""

from __future__ import annotations

import dramatiq

QUEUE_NAME = "job-queue"
FETCH_ACTOR = "fetch_job"


def enqueue_fetch(broker: dramatiq.Broker, request_id: str) -> None:
    """Queue the job for a worker; the message carries only the request_id."""
    broker.enqueue(dramatiq.Message(
        queue_name=QUEUE_NAME, actor_name=FETCH_ACTOR, args=(request_id,), kwargs={}, options={},
    ))
