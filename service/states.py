"""The job state machine: the states and, for each, the states it may be entered from.

    pending ─> queued ─> processing ─┬─> complete
                 ▲                   ├─> awaiting_webhook ─┬─> complete
                 │                   │                     ├─> timed_out
                 │                   └─> failed            │
                 └──────── re-request (webhook_retries) ───┘
                 ▲
                 └── operator retry <── failed, timed_out (only while the payload is kept)

A vendor's webhook may also complete a job that is still processing (it beat the worker) or
queued again for a re-request (the data of the earlier request came after all).
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    AWAITING_WEBHOOK = "awaiting_webhook"
    COMPLETE = "complete"
    FAILED = "failed"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.TIMED_OUT})

# processing may also be re-entered by a redelivery of the message that claimed it (JobStore.claim).
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    # failed and timed_out: an operator's retry from the dashboard (JobStore.retry), possible only
    # while the job's payload is kept (KEEP_FAILED_PAYLOADS); nothing else reopens a finished job.
    JobStatus.PENDING: frozenset({JobStatus.QUEUED}),  # the enqueue after the insert failed
    JobStatus.QUEUED: frozenset({JobStatus.PENDING, JobStatus.AWAITING_WEBHOOK, JobStatus.FAILED, JobStatus.TIMED_OUT}),
    # processing again: only a redelivery of the message that claimed the job (JobStore.claim).
    JobStatus.PROCESSING: frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING}),
    JobStatus.AWAITING_WEBHOOK: frozenset({JobStatus.PROCESSING}),
    JobStatus.COMPLETE: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.AWAITING_WEBHOOK}),
    JobStatus.FAILED: frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING}),
    JobStatus.TIMED_OUT: frozenset({JobStatus.AWAITING_WEBHOOK}),
}
