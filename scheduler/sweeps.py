"""Sweeps the clock runs: each finds stuck jobs in bounded batches and moves them on."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Callable

from service.states import JobStatus
from service.store import JobStore

log = logging.getLogger(__name__)

BATCH_SIZE = 500


def requeue_pending(store: JobStore, enqueue: Callable[[str], None], older_than: timedelta) -> int:
    """Enqueue jobs stored but never enqueued (the queue was down); return how many."""
    requeued = 0
    for request_id in store.stale_ids(JobStatus.PENDING, older_than, BATCH_SIZE):
        enqueue(request_id)
        if store.transition(request_id, JobStatus.QUEUED, detail="enqueued by the pending sweep"):
            requeued += 1
    if requeued:
        log.info("pending sweep: re-enqueued %d job(s)", requeued)
    return requeued
