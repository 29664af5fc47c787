"""The job store: one MongoDB document per job, changed only by conditional updates."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import bson.errors
import orjson
import pymongo
import pymongo.errors
from cryptography.fernet import Fernet, MultiFernet
from pymongo.collection import Collection

from queueing.batching import Batch
from service import states
from service.config import Config
from service.errors import JobNotFound, UnstorableResult
from service.states import TERMINAL, Event, Guard, JobStatus

log = logging.getLogger(__name__)

HISTORY_LIMIT = 50
PUBLIC_FIELDS = {"payload": False}
#: What a list of a client's jobs shows of each: neither the payload nor the history.
LISTED_FIELDS = {"payload": False, "history": False}
#: The client of the jobs submitted without an API key (AUTH=open), and of those from before clients.
PUBLIC_CLIENT = "public"
#: A page of a client's jobs reads at most this many of them to find the ones its filters match.
MAX_LISTED_SCAN = 5_000
#: The newest creation times a page of a client's list reads first; each older window read next is twice as long.
FIRST_LIST_WINDOW = timedelta(minutes=1)
#: Older than any job: where a list that names no created_after stops reading.
LIST_FLOOR = datetime(2020, 1, 1, tzinfo=timezone.utc)
#: The states an operator may retry from, and the filter that says a retry has a payload to send.
RETRYABLE = states.RETRY.leaves
PAYLOAD_KEPT = {"payload": {"$exists": True}}
#: The due time of a client callback given up: it stays pending, out of the sweep's reach, for an operator to re-send.
CALLBACK_GIVEN_UP = datetime(9999, 12, 31, tzinfo=timezone.utc)
#: What makes a result unstorable, found by the driver while encoding it.
UNSTORABLE = (OverflowError, bson.errors.InvalidDocument, pymongo.errors.DocumentTooLarge)
#: What is needed of a finished job to report it (service/outcomes.py); these fields never change.
FINISHED_FIELDS = {"vendor": True, "client": True, "created_at": True, "callback_url": True}
#: What a worker reads of the jobs it claims: all but the history, which it never needs.
CLAIMED_FIELDS = {"history": False}


class Claim(NamedTuple):
    """A worker's claim of a job for the message it runs."""

    request_id: str
    message_id: str


class Completion(NamedTuple):
    """A job's result, to store as it completes."""

    request_id: str
    fields: dict[str, Any]
    detail: str
    attempt: int | None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def push_history(entry: dict[str, Any]) -> dict[str, Any]:
    """Return the `$push` that appends `entry` to a job's history, keeping the newest HISTORY_LIMIT."""
    return {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}}


def write_errors(error: pymongo.errors.BulkWriteError) -> dict[int, pymongo.errors.WriteError]:
    """Return, by its index in the bulk, the error of each write a bulk write refused."""
    return {failure["index"]: pymongo.errors.WriteError(failure["errmsg"], failure["code"], failure)
            for failure in error.details["writeErrors"]}


def log_entered(state: JobStatus, request_id: str, detail: str | None) -> None:
    """Log a job's move into a state that is not final (a final state is logged by service/outcomes.py)."""
    log.info("job %s", state.value, extra={"request_id": request_id, "state": state.value, "detail": detail})


def payload_cipher(encryption_key: str) -> MultiFernet:
    """Build the payload cipher; ENCRYPTION_KEY may list several keys, newest first, for rotation."""
    return MultiFernet([Fernet(key.strip()) for key in encryption_key.split(",") if key.strip()])


def past_webhook_deadline() -> dict[str, Any]:
    """Filter jobs whose webhook deadline has passed; a job given a new deadline meanwhile is spared."""
    return {"webhook_deadline": {"$lt": utcnow()}}


def overdue_callbacks(overdue_by: timedelta) -> dict[str, Any]:
    """Filter finished jobs whose client callback is not delivered and was due over `overdue_by` ago.

    Exactly the fields of index callbacks_due, which holds only the jobs whose callback is pending.
    """
    # An unfinished job's callback_due_at is missing, or None after a retry: neither is less than a date.
    return {"callback_pending": True, "callback_due_at": {"$lt": utcnow() - overdue_by}}


def stale_jobs(status: JobStatus, older_than: timedelta) -> dict[str, Any]:
    """Filter jobs in `status` whose `due_at` is over `older_than` past: exactly the fields of index status_due_at."""
    return {"status": status.value, "due_at": {"$lt": utcnow() - older_than}}


def connect(mongodb_uri: str, timeout_ms: int = 2_000, write_concern: str | None = None,
            read_concern: str | None = None) -> pymongo.MongoClient:
    """Connect lazily, with short timeouts so an outage is an error, not a hang; concerns left unset keep the URI's."""
    concerns = {}
    if write_concern:
        concerns["w"] = int(write_concern) if write_concern.isdigit() else write_concern
    if read_concern:
        concerns["readConcernLevel"] = read_concern
    return pymongo.MongoClient(
        mongodb_uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 5, 10_000),
        **concerns,
    )


def jobs_collection(client: pymongo.MongoClient) -> Collection:
    """Return the jobs collection of the URI's database (default `vendorfetch`)."""
    return client.get_default_database("vendorfetch")["jobs"]


def open_store(config: Config) -> JobStore:
    """Build the job store the configuration describes."""
    return JobStore(
        jobs_collection(connect(config.mongodb_uri, config.store_timeout_ms, config.mongodb_write_concern, config.mongodb_read_concern)),
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
        # Only an operator's retry needs the payload of a job that did not complete.
        self.erased_at = TERMINAL - RETRYABLE if keep_failed_payloads else TERMINAL
        # Reads by id are on the API's hot path: concurrent ones share a round trip (new jobs
        # share theirs in service/intake.py).
        self._find = Batch(self.find_many)
        # A worker's claims and completions share one: the embedded store's cost per document falls
        # with the size of the bulk write.
        self._moves = Batch(self._move_many)

    def migrate(self) -> None:
        """Create the indexes this version needs and bring earlier versions' jobs up to it (idempotent)."""
        # One index serves every sweep, each reading a state's jobs by `due_at`: every secondary index
        # slows the insert of every job. Retention is a sweep, not a TTL index (docs/decisions/0008-retention-is-a-sweep.md).
        earlier = self.collection.index_information()
        self.collection.create_index([("status", 1), ("due_at", 1)], name="status_due_at")
        # A client's list of its jobs, newest first; its filters on status and vendor are applied
        # while reading, as one index serves them all (service/listing.py).
        self.collection.create_index([("client", 1), ("created_at", -1)], name="client_created_at")
        self.collection.update_many({"client": None}, {"$set": {"client": PUBLIC_CLIENT}})  # jobs from before clients
        self._date_earlier_jobs()
        for replaced in ("status_updated_at", "queued_due_at", "retention_ttl"):  # what earlier versions used
            if replaced in earlier:
                self.collection.drop_index(replaced)
        if self.client_callbacks:
            # Only the jobs whose client callback is pending, which is all the callback sweep reads,
            # however many finished jobs retention keeps; only with callbacks on, as even a partial
            # index slows every insert.
            self.collection.create_index(
                [("callback_pending", 1), ("callback_due_at", 1)], name="callbacks_due",
                partialFilterExpression={"callback_pending": True},
            )
        elif "callbacks_due" in earlier:  # callbacks turned off since: nothing reads it now
            self.collection.drop_index("callbacks_due")
        if "callbacks_pending" in earlier:  # an earlier version's, on finished_at
            self.collection.drop_index("callbacks_pending")
        # Earlier versions kept no due time for a pending callback: it was due when its job finished
        # (an unfinished job's stays unset).
        self.collection.update_many({"callback_pending": True, "callback_due_at": None}, [{"$set": {"callback_due_at": "$finished_at"}}])
        # They also stopped tracking a callback once it was queued: one queued in the last day and
        # not known delivered may still be on its way, so it is pending again (its webhook-id lets
        # the client drop a second copy).
        self.collection.update_many(
            {"callback_queued_at": {"$gt": utcnow() - timedelta(days=1)}, "callback_pending": None,
             "callback_delivered_at": None, "callback_attempts": None},
            {"$set": {"callback_pending": True, "callback_due_at": utcnow()}},
        )
        # Earlier versions kept the claiming message's id after a job left processing; a claim now
        # takes a job that is not processing only while it names no message.
        self.collection.update_many(
            {"status": {"$in": [JobStatus.PENDING.value, JobStatus.QUEUED.value]}, "message_id": {"$ne": None}},
            {"$unset": {"message_id": ""}},
        )

    def _date_earlier_jobs(self) -> None:
        """Give the jobs that versions before `due_at` stored (or moved, while they still ran) the `due_at` this one keeps."""
        # A job that is not queued is due from its last change.
        self.collection.update_many(
            {"status": {"$ne": JobStatus.QUEUED.value}, "due_at": None}, [{"$set": {"due_at": "$updated_at"}}],
        )
        # A queued job without one (before the orphan sweep timed queued jobs by their slot) is due now.
        self.collection.update_many({"status": JobStatus.QUEUED.value, "due_at": None}, {"$set": {"due_at": utcnow()}})

    def create(
        self, request_id: str, vendor: str, payload: dict[str, Any], *, client: str = PUBLIC_CLIENT, callback_url: str | None = None,
    ) -> None:
        """Store a new job as queued; the caller enqueues it next or marks it pending."""
        [error] = self.insert_many([{**self.new_job(request_id, payload, client=client, callback_url=callback_url), "vendor": vendor}])
        if error is not None:
            raise error

    def new_job(
        self, request_id: str, payload: dict[str, Any], *, client: str = PUBLIC_CLIENT, callback_url: str | None = None,
    ) -> dict[str, Any]:
        """Return the document of a new queued job, its payload encrypted; `insert_many` takes it once its vendor is set.

        It is due now; the intake moves `due_at` to the slot its vendor gives it.
        """
        now = utcnow()
        job = {
            "_id": request_id,
            "client": client,
            "status": JobStatus.QUEUED.value,
            "due_at": now,
            "payload": self.cipher.encrypt(orjson.dumps(payload)).decode(),
            "attempts": 0,
            "history": [{"state": JobStatus.QUEUED.value, "at": now}],
            "created_at": now,
            "updated_at": now,
        }
        if callback_url:
            # Pending until delivered or given up; due as soon as the job finishes. While it is
            # pending and overdue, the callback sweep queues it (again).
            job.update(callback_url=callback_url, callback_pending=True)
        return job

    def insert_many(self, jobs: list[dict[str, Any]]) -> list[Exception | None]:
        """Insert new jobs in one command; return, per job, None or the error that kept it out."""
        try:
            self.collection.insert_many(jobs, ordered=False)
        except pymongo.errors.BulkWriteError as error:
            refused = write_errors(error)
            return [refused.get(i) for i in range(len(jobs))]
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

    def client_jobs(
        self, client: str, *, created_after: datetime | None = None, created_before: datetime | None = None,
        starting_after: tuple[datetime, str] | None = None, status: str | None = None, vendor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[dict[str, Any]], tuple[datetime, str] | None]:
        """Return up to `limit` of the client's jobs, newest first, and where the next page starts (None: no more).

        The query names exactly the fields of index client_created_at (any other field and the
        embedded server scans the whole collection), so the status and vendor filters, and the
        jobs of the cursor's own millisecond already shown, are left out while reading. The
        embedded server also sorts all that an index range holds, however small the page: so a
        page reads back in time through windows of creation times, each twice as long as the one
        before, and stops once it is full. A page reads at most MAX_LISTED_SCAN jobs: when its
        filters match few, it may hold fewer than `limit` and still say where the next starts.
        """
        upper = created_before
        if starting_after is not None:  # dates are stored to the millisecond: before the next one is up to the cursor's own
            after_cursor = starting_after[0] + timedelta(milliseconds=1)
            upper = after_cursor if upper is None else min(upper, after_cursor)
        floor = created_after or LIST_FLOOR
        width, found, last, scanned = FIRST_LIST_WINDOW, [], None, 0
        while True:
            newest = upper or utcnow()
            lower = floor if newest - floor <= width else newest - width
            created: dict[str, Any] = {"$gte": lower} if lower > floor else {"$gt": floor}
            if upper is not None:
                created["$lt"] = upper
            window = self.collection.find({"client": client, "created_at": created}, LISTED_FIELDS)
            for job in window.sort([("created_at", -1), ("_id", -1)]):
                if starting_after is not None and job["created_at"] == starting_after[0] and job["_id"] >= starting_after[1]:
                    continue
                if scanned == MAX_LISTED_SCAN:
                    return found, last
                scanned += 1
                if (status is None or job["status"] == status) and (vendor is None or job.get("vendor") == vendor):
                    if len(found) == limit:
                        return found, (found[-1]["created_at"], found[-1]["_id"])
                    found.append(job)
                last = (job["created_at"], job["_id"])
            if lower == floor:
                return found, None
            upper, width = lower, width * 2

    def _apply(
        self, event: Event, request_id: str, *, detail: str | None = None, guarded_by: str | None = None,
        fields: dict[str, Any] | None = None, inc: dict[str, int] | None = None, attempt: int | None = None,
    ) -> bool:
        """Apply `event` to the job as one conditional update; tell whether the job moved.

        This is the only writer of `status` (with `_move_many`, which writes the same updates in
        bulk); see `_transition` for what every event writes.
        """
        query, update = self._transition(event, request_id, detail, guarded_by, fields, inc, attempt)
        moved = self.collection.update_one(query, update).modified_count == 1
        if moved and not event.enters.is_terminal:
            log_entered(event.enters, request_id, detail)
        return moved

    def _transition(
        self, event: Event, request_id: str, detail: str | None = None, guarded_by: str | None = None,
        fields: dict[str, Any] | None = None, inc: dict[str, int] | None = None, attempt: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the filter and the update that apply `event` to the job.

        The update makes the job due now (`due_at`) in its new state: the sweeps time every state
        from there, and a queued job's start moves to its slot when the intake or the worker's
        gate gives it one. Terminal states start retention and erase the payload (failed and
        timed_out keep it with KEEP_FAILED_PAYLOADS, for a retry). `message_id` names the message
        holding a processing job, and nothing else. `guarded_by` is the message an OWN_MESSAGE
        event acts for; `attempt`, given where a call to the vendor had this outcome, becomes the
        job's count of attempts.
        """
        now = utcnow()
        to = event.enters
        entry = {"state": to.value, "at": now}
        if detail:
            entry["detail"] = detail
        update: dict[str, Any] = {
            "$set": {**(fields or {}), "status": to.value, "updated_at": now, "due_at": now},
            "$push": push_history(entry),
        }
        if attempt is not None:
            update["$set"]["attempts"] = attempt
        unset = {} if to is JobStatus.PROCESSING else {"message_id": ""}
        if to.is_terminal:
            # Every final state makes a pending client callback due (only those jobs are indexed for
            # the callback sweep), in the same write: no outage between two writes can lose it.
            update["$set"].update(finished_at=now, expires_at=now + self.retention, callback_due_at=now)
        if to in self.erased_at:
            unset["payload"] = ""
        if unset:
            update["$unset"] = unset
        if inc:
            update["$inc"] = inc
        # Plain top-level fields only, `_id` first: with $and or $or the embedded MongoDB-wire server
        # scans the whole collection for every transition, and it tries each field's indexes in order.
        query = {"_id": request_id, **self._guard(event.guard, guarded_by), "status": {"$in": [s.value for s in event.leaves]}}
        return query, update

    @staticmethod
    def _guard(guard: Guard, message_id: str | None) -> dict[str, Any]:
        """Return the filter that checks an event's guard."""
        if guard is Guard.OWN_MESSAGE:
            # A job no message claimed yet has none; a processing job only the one that claimed it.
            return {"message_id": {"$in": [None, message_id]}}
        if guard is Guard.PAST_DEADLINE:
            return past_webhook_deadline()
        if guard is Guard.PAYLOAD_KEPT:
            return PAYLOAD_KEPT
        return {}

    def finished_facts(self, request_id: str) -> dict[str, Any] | None:
        """Return what is needed to report a finished job: its vendor, creation time and callback URL."""
        return self.collection.find_one({"_id": request_id}, FINISHED_FIELDS)

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
        """Record that the job's client callback is queued to run now, so the callback sweep waits for it."""
        # Only while the job is finished: a retry since then makes a new outcome, whose callback is due again.
        self.collection.update_one({"_id": request_id, "finished_at": {"$ne": None}}, {"$set": {"callback_due_at": utcnow()}})

    def overdue_callback_ids(self, overdue_by: timedelta, limit: int) -> list[str]:
        """Return ids of finished jobs whose client callback is pending and over `overdue_by` late (its message was lost)."""
        cursor = self.collection.find(overdue_callbacks(overdue_by), {"_id": True}).limit(limit)
        return [job["_id"] for job in cursor]

    def callback_attempted(
        self, job: dict[str, Any], attempt: int, detail: str, *, next_at: datetime | None = None, delivered: bool = False,
    ) -> bool:
        """Record attempt `attempt` of the callback of `job` (as read before it): delivered, due again at `next_at`, or else given up.

        Only if no other attempt was recorded meanwhile and no operator retried the job since:
        tell whether it was, so that a duplicate delivery stops there.
        """
        now = utcnow()
        fields = {"callback_attempts": attempt, "callback_attempted_at": now}
        update: dict[str, Any] = {"$set": fields, "$push": push_history({"event": detail, "at": now})}
        if delivered:
            fields["callback_delivered_at"] = now
            update["$unset"] = {"callback_pending": ""}
        else:
            fields.update(callback_due_at=next_at or CALLBACK_GIVEN_UP, callback_error=detail)
        query = {"_id": job["_id"], "callback_attempts": job.get("callback_attempts"), "retries": job.get("retries")}
        return self.collection.update_one(query, update).modified_count == 1

    def given_up_callbacks(self, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """Count the jobs whose client callback was given up, and return up to `limit` of them, the latest first."""
        # Exactly the fields of index callbacks_due: no other filter keeps the embedded server on it.
        query = {"callback_pending": True, "callback_due_at": CALLBACK_GIVEN_UP}
        fields = {"vendor": True, "callback_attempts": True, "callback_error": True, "callback_attempted_at": True}
        found = self.collection.find(query, fields).sort("callback_attempted_at", -1).limit(limit)
        return self.collection.count_documents(query), list(found)

    def resend_callback(self, request_id: str, detail: str) -> bool:
        """Make a given-up client callback due again, with a fresh schedule; tell whether it was given up."""
        update = {"$set": {"callback_due_at": utcnow(), "callback_attempts": 0}, "$push": push_history({"event": detail, "at": utcnow()})}
        query = {"_id": request_id, "callback_pending": True, "callback_due_at": CALLBACK_GIVEN_UP}
        return self.collection.update_one(query, update).modified_count == 1

    def claim(self, request_id: str, message_id: str) -> dict[str, Any] | None:
        """Mark the job processing for this message and return it, its payload decrypted (absent if erased).

        A redelivery of the same message (a worker crashed, a retry, a deferral) may re-claim a
        job it already holds; any other message finds nothing to do and gets None. The worker's
        threads claiming and completing at the same time share two round trips (`_move_many`).
        """
        job = self._moves(Claim(request_id, message_id))
        if job is None:
            return None
        # Logged here, not on the flushing thread, so that the line carries the job's context (service/logs.py).
        log_entered(JobStatus.PROCESSING, request_id, None)
        if "payload" in job:
            job["payload"] = orjson.loads(self.cipher.decrypt(job["payload"].encode()))
        return job

    def cancel_waiting(self, request_id: str, detail: str) -> bool:
        """Cancel a job whose vendor was not called: its message's claim will be refused."""
        return self._apply(states.CANCEL, request_id, detail=detail)

    def cancel_started(self, request_id: str, detail: str) -> bool:
        """Cancel a job whose vendor call started: what the call brings will find the job final, and be discarded."""
        return self._apply(states.CANCEL_STARTED, request_id, detail=detail)

    def leave_pending(self, request_id: str, detail: str) -> bool:
        """Mark a queued job pending: its message could not be queued, so the orphan sweep will."""
        return self._apply(states.ENQUEUE_FAILED, request_id, detail=detail)

    def mark_queued(self, request_id: str, detail: str) -> bool:
        """Move a pending job to queued once its message is in the queue."""
        return self._apply(states.ENQUEUE, request_id, detail=detail)

    def await_webhook(self, request_id: str, deadline: datetime, *, detail: str, attempt: int) -> bool:
        """Record that the vendor accepted the job's `attempt` and will call back by `deadline`."""
        return self._apply(
            states.AWAIT_WEBHOOK, request_id, detail=detail, fields={"webhook_deadline": deadline}, attempt=attempt,
        )

    def complete(
        self, request_id: str, result: dict[str, Any], removed_keys: list[str], *, detail: str, attempt: int | None = None,
    ) -> bool:
        """Store the cleaned result and mark the job complete; raise UnstorableResult if it cannot be stored.

        The worker gives the `attempt` that got the result; a webhook completes the attempt already
        counted. Completions and claims in flight at once share two round trips (`_move_many`).
        """
        return self._moves(Completion(request_id, {"result": result, "removed_keys": removed_keys, "error": None}, detail, attempt))

    def _move_many(self, moves: list[Claim | Completion]) -> list[dict[str, Any] | None | bool | Exception]:
        """Apply CLAIM or COMPLETE for each move in one bulk write, then read back in one query what the moves must learn.

        A claim gets its job if the message it names holds it once the writes are done (the write
        of any other message was refused by the guard), else None. A completion learns whether it
        moved its job: when every write moved a job, each moved its own; else its job is read back,
        which it marks with a token of its own, and it moved the job whose token it carries, and no other.
        """
        tokens = [uuid.uuid4().hex if isinstance(move, Completion) else None for move in moves]
        writes = [pymongo.UpdateOne(*self._move_transition(move, token)) for move, token in zip(moves, tokens)]
        every_one_moved, refused = False, {}
        try:
            every_one_moved = self.collection.bulk_write(writes, ordered=False).modified_count == len(writes)
        except UNSTORABLE as error:  # found while encoding a result, before anything was sent
            if len(moves) > 1:  # only the one that cannot be stored may fail: each alone
                return [self._move_many([move])[0] for move in moves]
            return [UnstorableResult(f"the vendor's data cannot be stored: {type(error).__name__}")]
        except pymongo.errors.BulkWriteError as error:
            refused = write_errors(error)  # a claim refused is not claimed, which the read shows
        read = list({move.request_id for move in moves if isinstance(move, Claim) or not every_one_moved})
        found = {job["_id"]: job for job in self.collection.find({"_id": {"$in": read}}, CLAIMED_FIELDS)} if read else {}
        outcomes: list[dict[str, Any] | None | bool | Exception] = []
        for i, (move, token) in enumerate(zip(moves, tokens)):
            job = found.get(move.request_id)
            if isinstance(move, Claim):
                held = job is not None and job["status"] == JobStatus.PROCESSING.value and job.get("message_id") == move.message_id
                outcomes.append(dict(job) if held else None)  # each caller decrypts its own copy
            else:
                outcomes.append(every_one_moved or refused.get(i, job is not None and job.get("completed_by") == token))
        return outcomes

    def _move_transition(self, move: Claim | Completion, token: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the filter and update of a claim, or of a completion that marks its job with `token`."""
        if isinstance(move, Claim):
            return self._transition(states.CLAIM, move.request_id, guarded_by=move.message_id, fields={"message_id": move.message_id})
        return self._transition(
            states.COMPLETE, move.request_id, move.detail, fields={**move.fields, "completed_by": token}, attempt=move.attempt,
        )

    def fail(
        self, request_id: str, message_id: str, reason: str, *, detail: str | None = None, attempt: int | None = None,
    ) -> bool:
        """Fail the job on behalf of one message: only if no message claimed it yet, or this one did.

        A stale or duplicate message must never fail a job another message is working on. The
        client sees `reason`; `detail` (internal, say an exception) goes only into the history.
        `attempt` is given when a call to the vendor ended the job.
        """
        return self._apply(
            states.FAIL, request_id, detail=detail or reason, guarded_by=message_id, fields={"error": reason}, attempt=attempt,
        )

    def overdue_webhooks(self, limit: int) -> list[dict[str, Any]]:
        """Return up to `limit` jobs awaiting a webhook past their deadline, the most overdue first."""
        cursor = self.collection.find(
            {"status": JobStatus.AWAITING_WEBHOOK.value, **past_webhook_deadline()},
            {"webhook_deadline": True, "rerequests": True, **FINISHED_FIELDS},
        ).sort("webhook_deadline", 1).limit(limit)
        return list(cursor)

    def rerequest(self, request_id: str, detail: str) -> bool:
        """Queue an overdue async job again, so that its vendor is asked once more."""
        return self._apply(states.REREQUEST, request_id, detail=detail, inc={"rerequests": 1})

    def time_out(self, request_id: str, reason: str) -> bool:
        """Mark an overdue async job timed_out with a readable reason."""
        return self._apply(states.TIME_OUT, request_id, detail=reason, fields={"error": reason})

    def retry(self, request_id: str, detail: str) -> bool:
        """Queue a failed or timed-out job again, with a fresh retry budget, if its payload is kept.

        The job will finish again, and a client that asked for a callback hears of that outcome too.
        """
        job = self.collection.find_one({"_id": request_id}, {"callback_url": True}) or {}
        callback = {"callback_pending": True, "callback_due_at": None, "callback_delivered_at": None, "callback_attempts": 0}
        return self._apply(
            states.RETRY, request_id, detail=detail,
            fields={"attempts": 0, "rerequests": 0, "error": None, "finished_at": None, "expires_at": None,
                    **(callback if job.get("callback_url") else {})},
            inc={"retries": 1},
        )

    def record_attempt(self, request_id: str, attempt: int) -> None:
        """Count a call to the vendor whose outcome another event recorded first (its webhook beat the worker)."""
        self.collection.update_one({"_id": request_id}, {"$max": {"attempts": attempt}})

    def postpone(self, request_id: str, until: datetime) -> None:
        """Move a queued job's start to `until`, where its deferred message now waits: the orphan sweep waits as long."""
        self.collection.update_one({"_id": request_id, "status": JobStatus.QUEUED.value}, {"$set": {"due_at": until}})

    def note(self, request_id: str, detail: str, **fields: Any) -> None:
        """Append an event to the job's history without changing its state."""
        update: dict[str, Any] = {
            "$push": push_history({"event": detail, "at": utcnow()}),
        }
        if fields:
            update["$set"] = fields
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
