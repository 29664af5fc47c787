"""The fetch actor: a thin wrapper that hands a request_id to the JobRunner."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.deferral import Deferred, defer
from actors.runner import JobRunner
from queueing.messages import FETCH_ACTOR, QUEUE_NAME
from service.logs import about_job

# Vendor failures are retried by the runner against each vendor's max_retries and never reach
# Retries; this bound only stops endless retries of unexpected errors (a long MongoDB outage, a bug).
MAX_RETRIES = 30
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 5 * 60_000


def declare_fetch_actor(broker: dramatiq.Broker, runner: JobRunner) -> dramatiq.Actor:
    """Register the fetch actor on `broker`, running jobs with `runner`."""

    def fetch_job(request_id: str) -> None:
        message = CurrentMessage.get_current_message()
        with about_job(request_id, message.options.get("vendor")):
            try:
                runner.run(request_id, message.message_id)
            except Deferred as deferral:
                # Re-enqueued here, not raised: the runner counted any failed attempt, Retries must not.
                defer(broker, message, deferral.delay_ms, deferral.vendor, deferral.cause)

    return dramatiq.actor(
        fetch_job, broker=broker, actor_name=FETCH_ACTOR, queue_name=QUEUE_NAME,
        max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS,
    )
