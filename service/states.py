"""The job state machine: its states, and the named events that move a job between them.

    pending ─> queued ─> processing ─┬─> complete
                 ▲                   ├─> awaiting_webhook ─┬─> complete
                 │                   │                     ├─> timed_out
                 │                   └─> failed            │
                 └──────── rerequest (webhook_retries) ────┘
                 ▲
                 └── retry by an operator <── failed, timed_out (only while the payload is kept)

    any state before a final one ─> cancelled (by its client)

A vendor's webhook may also complete a job that is still processing (it beat the worker) or
queued again for a rerequest (the data of the earlier request came after all).

A client cancels a job by one of two events: `cancel` while the job waits (its vendor was never
called, so its slot goes back), `cancel_started` once its call started (the call finishes and
what it brings is discarded).

The store applies each event as one conditional update, filtered on the states it leaves and
its guard, and says whether the job moved (service/store.py); nothing else writes `status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class JobStatus(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    AWAITING_WEBHOOK = "awaiting_webhook"
    COMPLETE = "complete"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED})


class Guard(Enum):
    """What else must hold for an event to apply, checked in the same conditional update."""

    NONE = "none"
    #: A processing job moves only for the message that claimed it; a stale or duplicate one finds nothing.
    OWN_MESSAGE = "own message"
    #: The job's webhook deadline has passed: a job given a new deadline meanwhile is spared.
    PAST_DEADLINE = "past deadline"
    #: The job still has its payload to send (KEEP_FAILED_PAYLOADS).
    PAYLOAD_KEPT = "payload kept"


@dataclass(frozen=True)
class Event:
    """A named change of state: the states a job may leave by it, the state it enters, and its guard."""

    name: str
    leaves: frozenset[JobStatus]
    enters: JobStatus
    guard: Guard = Guard.NONE


SUBMIT = Event("submit", frozenset(), JobStatus.QUEUED)  # an insert, refused if the request_id exists
ENQUEUE_FAILED = Event("enqueue_failed", frozenset({JobStatus.QUEUED}), JobStatus.PENDING)  # the intake could not queue it
ENQUEUE = Event("enqueue", frozenset({JobStatus.PENDING}), JobStatus.QUEUED)  # the orphan sweep queued a pending job
CLAIM = Event(
    "claim", frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING}), JobStatus.PROCESSING, Guard.OWN_MESSAGE,
)
AWAIT_WEBHOOK = Event("await_webhook", frozenset({JobStatus.PROCESSING}), JobStatus.AWAITING_WEBHOOK)
COMPLETE = Event(
    "complete", frozenset({JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.AWAITING_WEBHOOK}), JobStatus.COMPLETE,
)
FAIL = Event(
    "fail", frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING}), JobStatus.FAILED, Guard.OWN_MESSAGE,
)
TIME_OUT = Event("time_out", frozenset({JobStatus.AWAITING_WEBHOOK}), JobStatus.TIMED_OUT, Guard.PAST_DEADLINE)
REREQUEST = Event("rerequest", frozenset({JobStatus.AWAITING_WEBHOOK}), JobStatus.QUEUED, Guard.PAST_DEADLINE)
RETRY = Event("retry", frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT}), JobStatus.QUEUED, Guard.PAYLOAD_KEPT)  # by an operator

CANCEL = Event("cancel", frozenset({JobStatus.PENDING, JobStatus.QUEUED}), JobStatus.CANCELLED)  # by its client
CANCEL_STARTED = Event(
    "cancel_started", frozenset({JobStatus.PROCESSING, JobStatus.AWAITING_WEBHOOK}), JobStatus.CANCELLED,
)  # by its client

EVENTS = (
    SUBMIT, ENQUEUE_FAILED, ENQUEUE, CLAIM, AWAIT_WEBHOOK, COMPLETE, FAIL, TIME_OUT, REREQUEST, RETRY, CANCEL, CANCEL_STARTED,
)
