"""What follows a job's final state: count it, log it, and queue its client's callback.

Whoever moves a job to a final state calls `Outcomes.finished` right after, in plain sight. The
state change stands whatever happens here: a data-store outage costs a metric or a log line,
and a callback that could not be queued is queued later by the clock's callback sweep.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import pymongo.errors
import redis
from dramatiq.errors import ConnectionClosed

from queueing.messages import enqueue_client_callback
from service.metrics import JOB_DURATION, JOBS_FINISHED
from service.states import JobStatus
from service.store import JobStore, utcnow

log = logging.getLogger(__name__)

OUTAGES = (pymongo.errors.PyMongoError, redis.RedisError, ConnectionClosed)


class Outcomes:
    """Report finished jobs; queue client callbacks through `broker` (None: callbacks are off)."""

    def __init__(self, store: JobStore, broker: dramatiq.Broker | None) -> None:
        self.store = store
        self.broker = broker

    def finished(self, request_id: str, status: JobStatus, *, detail: str | None = None, job: dict[str, Any] | None = None) -> None:
        """Count and log the job that just reached `status`, and queue its client callback if asked for.

        A caller that read the job before may pass it as `job` (its vendor, creation time and
        callback URL never change), which spares a read.
        """
        facts: dict[str, Any] = {"request_id": request_id, "state": status.value, "detail": detail}
        try:
            job = job or self.store.finished_facts(request_id)
            age_s = (utcnow() - job["created_at"]).total_seconds()
            facts.update(vendor=job["vendor"], duration_ms=round(age_s * 1000))
            JOBS_FINISHED.labels(job["vendor"], status.value).inc()
            JOB_DURATION.labels(job["vendor"], status.value).observe(age_s)
            if job.get("callback_url") and self.broker is not None:
                # The final state made it due; if the queue is down, the callback sweep finds it overdue.
                enqueue_client_callback(self.broker, request_id)
        except OUTAGES as error:
            log.warning("could not report the finished job: %r", error, extra={"request_id": request_id})
        finally:
            log.info("job %s", status.value, extra=facts)
