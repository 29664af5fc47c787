"""What an operator may do from the dashboard: retry failed jobs and purge dead letters.

Each action is written to the job's history and logged with the operator action, never with
a payload. A retry needs the job's payload, which is kept only with KEEP_FAILED_PAYLOADS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from queueing.broker import StreamsBroker
from queueing.deadletters import iter_dead_letters, purge
from queueing.messages import QUEUE_NAME, enqueue_client_callback, request_id_of
from service.dashboard.queries import failure_filter
from service.store import PAYLOAD_KEPT, JobStore

log = logging.getLogger(__name__)

#: The most jobs one "retry all" retries, so one click cannot flood a vendor's backlog.
RETRY_BATCH = 500


class OperatorActions:
    """Retry jobs and purge dead letters on an operator's request."""

    def __init__(self, store: JobStore, broker: StreamsBroker, enqueue: Callable[..., None]) -> None:
        self.store = store
        self.broker = broker
        self.enqueue = enqueue

    def retry(self, request_id: str, operator: str) -> bool:
        """Queue a failed or timed-out job again if its payload is kept; tell whether it was."""
        vendor = self.store.get(request_id)["vendor"]
        # Queued first, then enqueued: a worker must find the job claimable when the message arrives.
        if not self.store.retry(request_id, f"retried by an operator ({operator})"):
            log.info("operator retry refused: job is not failed or its payload is erased",
                     extra={"request_id": request_id, "operator_action": "retry", "operator": operator})
            return False
        self.enqueue(request_id, vendor=vendor)
        log.info("operator retried job", extra={"request_id": request_id, "vendor": vendor,
                                                "operator_action": "retry", "operator": operator})
        return True

    def retry_matching(self, vendor: str | None, reason: str | None, operator: str) -> int:
        """Retry up to RETRY_BATCH retryable jobs that match the failures filter; return how many."""
        query = {**failure_filter(vendor, reason), **PAYLOAD_KEPT}
        found = self.store.collection.find(query, {"_id": True}).sort("updated_at", -1).limit(RETRY_BATCH)
        retried = sum(self.retry(job["_id"], operator) for job in list(found))
        log.info("operator retried %d matching jobs", retried, extra={
            "operator_action": "retry_matching", "operator": operator, "vendor": vendor, "reason": reason, "count": retried,
        })
        return retried

    def resend_callback(self, request_id: str, operator: str) -> bool:
        """Queue a given-up client callback again, with a fresh schedule; tell whether it was given up."""
        if not self.store.resend_callback(request_id, f"client callback re-sent by an operator ({operator})"):
            return False
        enqueue_client_callback(self.broker, request_id)
        log.info("operator re-sent a client callback", extra={"request_id": request_id, "operator_action": "resend_callback", "operator": operator})
        return True

    def purge_dead_letters(self, operator: str) -> int:
        """Delete the job queue's dead letters, noting it in each job's history; return how many."""
        letters = list(iter_dead_letters(self.broker.client, QUEUE_NAME))
        # Only the entries listed here: one dead-lettered meanwhile is kept for the next look.
        purged = purge(self.broker.client, QUEUE_NAME, [letter.entry_id for letter in letters]) if letters else 0
        for letter in letters:
            request_id = request_id_of(letter.message)
            if request_id:
                self.store.note(request_id, f"dead letter {letter.entry_id} purged by an operator ({operator})")
        log.info("operator purged %d dead letters", purged,
                 extra={"operator_action": "purge_dead_letters", "operator": operator, "count": purged})
        return purged
