"""The job store: one MongoDB document per job, changed only by conditional updates."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import bson.errors
import orjson
import pymongo
import pymongo.errors
from cryptography.fernet import Fernet, MultiFernet
from pymongo.collection import Collection

from service.batching import Batch
from service.config import Config
from service.errors import JobNotFound, UnstorableResult
from service.metrics import JOB_DURATION, JOBS_FINISHED
from service.states import ALLOWED_FROM, TERMINAL, JobStatus

log = logging.getLogger(__name__)

HISTORY_LIMIT = 50
PUBLIC_FIELDS = {"payload": False}
#: The states an operator may retry from, and the filter that says a retry has a payload to send.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT})
PAYLOAD_KEPT = {"payload": {"$exists": True}}
FRESH = frozenset({JobStatus.PENDING, JobStatus.QUEUED})
FINISHED_FIELDS = {"vendor": True, "created_at": True, "callback_url": True}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def push_history(entry: dict[str, Any]) -> dict[str, Any]:
    """Return the `$push` that appends `entry` to a job's history, keeping the newest HISTORY_LIMIT."""
    return {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}}


def payload_cipher(encryption_key: str) -> MultiFernet:
    """Build the payload cipher; ENCRYPTION_KEY may list several keys, newest first, for rotation."""
    return MultiFernet([Fernet(key.strip()) for key in encryption_key.split(",") if key.strip()])


def past_webhook_deadline() -> dict[str, Any]:
    """Filter jobs whose webhook deadline has passed; a job given a new deadline meanwhile is spared."""
    return {"webhook_deadline": {"$lt": utcnow()}}


def pending_callbacks(finished_before: timedelta) -> dict[str, Any]:
    """Filter jobs finished over `finished_before` ago whose client callback is not queued: the fields of index callbacks_pending."""
    # An unfinished job's finished_at is missing, or None after a retry: neither is less than a date.
    return {"callback_pending": True, "finished_at": {"$lt": utcnow() - finished_before}}


def stale_jobs(status: JobStatus, older_than: timedelta) -> dict[str, Any]:
    """Filter jobs in `status` whose `due_at` is over `older_than` past: exactly the fields of index status_due_at."""
    return {"status": status.value, "due_at": {"$lt": utcnow() - older_than}}


def connect(mongodb_uri: str, timeout_ms: int = 2_000) -> pymongo.MongoClient:
    """Connect lazily, with short timeouts so an outage is an error, not a hang."""
    return pymongo.MongoClient(
        mongodb_uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 5, 10_000),
    )


def jobs_collection(client: pymongo.MongoClient) -> Collection:
    """Return the jobs collection of the URI's database (default `vendorfetch`)."""
    return client.get_default_database("vendorfetch")["jobs"]


def open_store(config: Config) -> JobStore:
    """Build the job store the configuration describes."""
    return JobStore(
        jobs_collection(connect(config.mongodb_uri, config.store_timeout_ms)),
        payload_cipher(config.encryption_key), timedelta(days=config.retention_days),
        keep_failed_payloads=config.keep_failed_payloads, client_callbacks=config.callback_secret is not None,
    )


class JobStore:
    """Create, read and move jobs through the state machine."""

    def __init__(
        self, collection: Collection, cipher: MultiFernet, retention: timedelta = timedelta(days=7),
        *, keep_failed_payloads: bool = False, client_callbacks: bool = False,
    ) -> None:
        self.collection = collection
        self.cipher = cipher
        self.retention = retention
        self.client_callbacks = client_callbacks
        # Called with the request_id of a finished job whose client asked for a callback; set by
        # actors.callbacks.notify_on_finish once the broker exists (it is built after the store).
        self.on_finished: Callable[[str], None] | None = None
        # Only an operator's retry needs the payload of a job that did not complete.
        self.erased_at = TERMINAL - RETRYABLE if keep_failed_payloads else TERMINAL
        # Reads by id are on the API's hot path: concurrent ones share a round trip (new jobs
        # share theirs in service/intake.py).
        self._find = Batch(self.find_many)

    def ensure_indexes(self) -> None:
        """Create the indexes the sweeps and retention need, and bring earlier versions' jobs up to them (idempotent)."""
        # Every secondary index slows every insert (the submission path): on the embedded server
        # each one adds about 120 µs to a job's insert and 0.3-0.7 ms to each of its updates. So
        # one index serves every sweep: each reads a state's jobs by `due_at` (see `transition`).
        # Retention is a sweep, not a TTL index: the embedded server's TTL monitor decodes every
        # document each minute under its storage lock (3 s at 60,000 jobs).
        earlier = self.collection.index_information()
        self.collection.create_index([("status", 1), ("due_at", 1)], name="status_due_at")
        if "status_due_at" not in earlier:
            self._date_earlier_jobs()
        for replaced in ("status_updated_at", "queued_due_at", "retention_ttl"):  # what earlier versions used
            if replaced in earlier:
                self.collection.drop_index(replaced)
        if self.client_callbacks:
            # Only the jobs whose client callback is not queued yet, which is all the callback
            # sweep reads, however many finished jobs retention keeps. Only with callbacks on:
            # even a partial index adds a quarter to an insert on the embedded server.
            self.collection.create_index(
                [("callback_pending", 1), ("finished_at", 1)], name="callbacks_pending",
                partialFilterExpression={"callback_pending": True},
            )
        elif "callbacks_pending" in earlier:  # callbacks turned off since: nothing reads it now
            self.collection.drop_index("callbacks_pending")

    def _date_earlier_jobs(self) -> None:
        """Give the jobs stored by earlier versions the `due_at` this one keeps; once, as each is a collection scan here."""
        # Earlier versions set due_at only on queued jobs: every other job is due from its last change.
        self.collection.update_many({"status": {"$ne": JobStatus.QUEUED.value}}, [{"$set": {"due_at": "$updated_at"}}])
        # A queued job without one (before the orphan sweep timed queued jobs by their slot) is due now.
        self.collection.update_many({"status": JobStatus.QUEUED.value, "due_at": None}, {"$set": {"due_at": utcnow()}})

    def create(self, request_id: str, vendor: str, payload: dict[str, Any], *, callback_url: str | None = None) -> None:
        """Store a new job as queued; the caller enqueues it next or marks it pending."""
        [error] = self.insert_many([{**self.new_job(request_id, payload, callback_url=callback_url), "vendor": vendor}])
        if error is not None:
            raise error

    def new_job(self, request_id: str, payload: dict[str, Any], *, callback_url: str | None = None) -> dict[str, Any]:
        """Return the document of a new queued job, its payload encrypted; `insert_many` takes it once its vendor is set.

        It is due now; the intake moves `due_at` to the slot its vendor gives it.
        """
        now = utcnow()
        job = {
            "_id": request_id,
            "status": JobStatus.QUEUED.value,
            "due_at": now,
            "payload": self.cipher.encrypt(orjson.dumps(payload)).decode(),
            "attempts": 0,
            "history": [{"state": JobStatus.QUEUED.value, "at": now}],
            "created_at": now,
            "updated_at": now,
        }
        if callback_url:
            # Cleared once the callback is queued; until then the callback sweep can find the job.
            job.update(callback_url=callback_url, callback_pending=True)
        return job

    def insert_many(self, jobs: list[dict[str, Any]]) -> list[Exception | None]:
        """Insert new jobs in one command; return, per job, None or the error that kept it out."""
        try:
            self.collection.insert_many(jobs, ordered=False)
        except pymongo.errors.BulkWriteError as error:
            refused = {failure["index"]: failure for failure in error.details["writeErrors"]}
            return [
                pymongo.errors.WriteError(refused[i]["errmsg"], refused[i]["code"], refused[i]) if i in refused else None
                for i in range(len(jobs))
            ]
        return [None] * len(jobs)

    def get(self, request_id: str) -> dict[str, Any]:
        """Return the job without its payload, or raise JobNotFound."""
        job = self._find(request_id)
        if job is None:
            raise JobNotFound(request_id)
        return job

    def find_many(self, request_ids: list[str]) -> list[dict[str, Any] | None]:
        """Read a batch of jobs by id, without their payloads; None for each id that has no job."""
        found = {job["_id"]: job for job in self.collection.find({"_id": {"$in": list(set(request_ids))}}, PUBLIC_FIELDS)}
        return [found.get(request_id) for request_id in request_ids]

    def transition(
        self,
        request_id: str,
        to: JobStatus,
        *,
        detail: str | None = None,
        fields: dict[str, Any] | None = None,
        allowed_from: frozenset[JobStatus] | None = None,
        extra_filter: dict[str, Any] | None = None,
        inc: dict[str, int] | None = None,
        job: dict[str, Any] | None = None,
    ) -> bool:
        """Move a job to `to` if it is in an allowed previous state; tell whether it moved.

        This is the only writer of `status`, and it makes the job due now (`due_at`) in its new
        state: the sweeps time every state from there, and a queued job's start moves to its slot
        when the intake or the worker's gate gives it one. Terminal states start retention and
        erase the payload (failed and timed_out keep it with KEEP_FAILED_PAYLOADS, for a retry).
        A caller that read the job before may pass it as `job` (its FINISHED_FIELDS never
        change), which spares a read.
        """
        # A caller may only narrow the table, never widen it.
        sources = ALLOWED_FROM[to] if allowed_from is None else ALLOWED_FROM[to] & allowed_from
        now = utcnow()
        entry = {"state": to.value, "at": now}
        if detail:
            entry["detail"] = detail
        update: dict[str, Any] = {
            "$set": {**(fields or {}), "status": to.value, "updated_at": now, "due_at": now},
            "$push": push_history(entry),
        }
        if to.is_terminal:
            update["$set"].update(finished_at=now, expires_at=now + self.retention)
        if to in self.erased_at:
            update["$unset"] = {"payload": ""}
        if inc:
            update["$inc"] = inc
        # Plain top-level fields only: with $and or $or the embedded MongoDB-wire server stops
        # using the _id index and scans the whole collection for every transition.
        query = {**(extra_filter or {}), "_id": request_id, "status": {"$in": [state.value for state in sources]}}
        moved = self.collection.update_one(query, update).modified_count == 1
        if moved:
            facts = {"request_id": request_id, "state": to.value, "detail": detail}
            if to.is_terminal:
                facts.update(self._finished(request_id, to, job))
            log.info("job %s", to.value, extra=facts)
        return moved

    def _finished(self, request_id: str, status: JobStatus, job: dict[str, Any] | None) -> dict[str, Any]:
        """Count a finished job and queue its client callback if asked for; return its vendor and age for the log line."""
        facts: dict[str, Any] = {}
        try:
            job = job or self.collection.find_one({"_id": request_id}, FINISHED_FIELDS)
            age_s = (utcnow() - job["created_at"]).total_seconds()
            facts = {"vendor": job["vendor"], "duration_ms": round(age_s * 1000)}
            JOBS_FINISHED.labels(job["vendor"], status.value).inc()
            JOB_DURATION.labels(job["vendor"], status.value).observe(age_s)
            if job.get("callback_url") and self.on_finished is not None:
                self.on_finished(request_id)
                self.mark_callback_queued(request_id)
        except Exception as error:  # the state change stands; the callback sweep queues what was missed
            log.warning("could not record finished job: %s", type(error).__name__, extra={"request_id": request_id})
        return facts

    def purge_expired(self, limit: int) -> int:
        """Delete up to `limit` finished jobs per final state whose retention has ended; return how many."""
        now, deleted = utcnow(), 0
        for status in TERMINAL:
            # A job's retention starts when it finishes, its last transition, so the index reads only
            # jobs finished a retention ago. The filter names exactly the index's fields: with any
            # other field the embedded server scans the whole collection. expires_at is checked
            # here and again on delete: a job finished under a longer retention stays until then.
            finished = self.collection.find(stale_jobs(status, self.retention), {"expires_at": True}).limit(limit)
            request_ids = [job["_id"] for job in finished if job.get("expires_at") and job["expires_at"] < now]
            if request_ids:
                expired = {"_id": {"$in": request_ids}, "status": status.value, "expires_at": {"$lt": now}}
                deleted += self.collection.delete_many(expired).deleted_count
        return deleted

    def mark_callback_queued(self, request_id: str) -> None:
        """Record that the job's client callback is queued, so the callback sweep leaves it alone."""
        # Only while the job is finished: a retry since then makes a new outcome, whose callback is due again.
        self.collection.update_one(
            {"_id": request_id, "finished_at": {"$ne": None}},
            {"$set": {"callback_queued_at": utcnow()}, "$unset": {"callback_pending": ""}},
        )

    def unqueued_callbacks(self, older_than: timedelta, limit: int) -> list[str]:
        """Return ids of jobs finished over `older_than` ago whose client callback was never queued (Redis was down)."""
        cursor = self.collection.find(pending_callbacks(older_than), {"_id": True}).limit(limit)
        return [job["_id"] for job in cursor]

    def claim(self, request_id: str, message_id: str) -> dict[str, Any] | None:
        """Mark the job processing for this message and return it with its payload decrypted.

        A redelivery of the same message (a worker crashed, a retry, a deferral) may re-claim a
        job it already holds; any other message finds nothing to do and gets None.
        """
        claim = {"fields": {"message_id": message_id}, "inc": {"attempts": 1}}
        moved = self.transition(request_id, JobStatus.PROCESSING, allowed_from=FRESH, **claim) or self.transition(
            request_id, JobStatus.PROCESSING, allowed_from=frozenset({JobStatus.PROCESSING}),
            extra_filter={"message_id": message_id}, **claim,
        )
        if not moved:
            return None
        job = self.collection.find_one({"_id": request_id})
        if job is None:
            return None
        if "payload" not in job:  # erased (a retried job whose payload was not kept): nothing to send
            self.fail(request_id, "the job's payload was erased, so it cannot be sent to the vendor again")
            return None
        job["payload"] = orjson.loads(self.cipher.decrypt(job["payload"].encode()))
        return job

    def complete(
        self, request_id: str, result: dict[str, Any], removed_keys: list[str], *, detail: str, job: dict[str, Any] | None = None,
    ) -> bool:
        """Store the cleaned result and mark the job complete; raise UnstorableResult if it cannot be stored."""
        try:
            return self.transition(
                request_id, JobStatus.COMPLETE, detail=detail,
                fields={"result": result, "removed_keys": removed_keys, "error": None}, job=job,
            )
        except (OverflowError, bson.errors.InvalidDocument, pymongo.errors.DocumentTooLarge) as error:
            raise UnstorableResult(f"the vendor's data cannot be stored: {type(error).__name__}") from error

    def fail(self, request_id: str, reason: str) -> bool:
        """Mark the job failed with a readable reason."""
        return self.transition(request_id, JobStatus.FAILED, detail=reason, fields={"error": reason})

    def fail_for_message(self, request_id: str, message_id: str, reason: str, detail: str | None = None) -> bool:
        """Fail the job on behalf of one message: only if no message claimed it yet, or this one did.

        A stale or duplicate message must never fail a job another message is working on. The
        client sees `reason`; `detail` (internal, say an exception) goes only into the history.
        """
        fail = {"detail": detail or reason, "fields": {"error": reason}}
        return self.transition(request_id, JobStatus.FAILED, allowed_from=FRESH, **fail) or self.transition(
            request_id, JobStatus.FAILED, allowed_from=frozenset({JobStatus.PROCESSING}),
            extra_filter={"message_id": message_id}, **fail,
        )

    def mark_queued(self, request_id: str, detail: str) -> bool:
        """Move a pending job to queued once its message is in the queue."""
        return self.transition(request_id, JobStatus.QUEUED, detail=detail, allowed_from=frozenset({JobStatus.PENDING}))

    def overdue_webhooks(self, limit: int) -> list[dict[str, Any]]:
        """Return up to `limit` jobs awaiting a webhook past their deadline, the most overdue first."""
        cursor = self.collection.find(
            {"status": JobStatus.AWAITING_WEBHOOK.value, **past_webhook_deadline()},
            {"vendor": True, "webhook_deadline": True, "rerequests": True},
        ).sort("webhook_deadline", 1).limit(limit)
        return list(cursor)

    def rerequest(self, request_id: str, detail: str) -> bool:
        """Queue an overdue async job again, so that its vendor is asked once more."""
        return self.transition(
            request_id, JobStatus.QUEUED, detail=detail, allowed_from=frozenset({JobStatus.AWAITING_WEBHOOK}),
            extra_filter=past_webhook_deadline(), inc={"rerequests": 1},
        )

    def time_out(self, request_id: str, reason: str) -> bool:
        """Mark an overdue async job timed_out with a readable reason."""
        return self.transition(
            request_id, JobStatus.TIMED_OUT, detail=reason, fields={"error": reason}, extra_filter=past_webhook_deadline(),
        )

    def retry(self, request_id: str, detail: str) -> bool:
        """Queue a failed or timed-out job again, with a fresh retry budget, if its payload is kept.

        The job will finish again, and a client that asked for a callback hears of that outcome too.
        """
        job = self.collection.find_one({"_id": request_id}, {"callback_url": True}) or {}
        callback = {"callback_pending": True, "callback_queued_at": None, "callback_delivered_at": None}
        return self.transition(
            request_id, JobStatus.QUEUED, detail=detail, allowed_from=RETRYABLE, extra_filter=PAYLOAD_KEPT,
            fields={"attempts": 0, "rerequests": 0, "error": None, "finished_at": None, "expires_at": None,
                    **(callback if job.get("callback_url") else {})},
            inc={"retries": 1},
        )

    def postpone(self, request_id: str, until: datetime) -> None:
        """Move a queued job's start to `until`, where its deferred message now waits: the orphan sweep waits as long."""
        self.collection.update_one({"_id": request_id, "status": JobStatus.QUEUED.value}, {"$set": {"due_at": until}})

    def note(self, request_id: str, detail: str, *, inc: dict[str, int] | None = None, **fields: Any) -> None:
        """Append an event to the job's history without changing its state."""
        update: dict[str, Any] = {
            "$push": push_history({"event": detail, "at": utcnow()}),
        }
        if fields:
            update["$set"] = fields
        if inc:
            update["$inc"] = inc
        self.collection.update_one({"_id": request_id}, update)

    def renew_if_stale(self, request_id: str, status: JobStatus, older_than: timedelta, detail: str) -> bool:
        """Record `detail` on a job still in `status` and late by over `older_than`, making it due now; tell whether it was.

        A sweep calls this before acting on a job it found stale: a worker may have moved it since.
        """
        now = utcnow()
        update = {"$set": {"updated_at": now, "due_at": now}, "$push": push_history({"event": detail, "at": now})}
        return self.collection.update_one({"_id": request_id, **stale_jobs(status, older_than)}, update).modified_count == 1

    def stale_ids(self, status: JobStatus, older_than: timedelta, batch_size: int = 500) -> Iterator[str]:
        """Yield the ids of jobs in `status` late by over `older_than`, most overdue first, in batches."""
        cursor = self.collection.find(stale_jobs(status, older_than), {"_id": True}).sort("due_at", 1)
        cursor.batch_size(batch_size)
        return (job["_id"] for job in cursor)
