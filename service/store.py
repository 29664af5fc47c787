"""The job store: one MongoDB document per job, changed only by conditional updates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pymongo
from cryptography.fernet import Fernet, MultiFernet
from pymongo.collection import Collection

from service.config import Config
from service.errors import JobNotFound
from service.states import ALLOWED_FROM, JobStatus

HISTORY_LIMIT = 50
PUBLIC_FIELDS = {"payload": False}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def payload_cipher(encryption_key: str) -> MultiFernet:
    """Build the payload cipher; ENCRYPTION_KEY may list several keys, newest first, for rotation."""
    return MultiFernet([Fernet(key.strip()) for key in encryption_key.split(",") if key.strip()])


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
    )


class JobStore:
    """Create, read and move jobs through the state machine."""

    def __init__(self, collection: Collection, cipher: MultiFernet, retention: timedelta = timedelta(days=7)) -> None:
        self.collection = collection
        self.cipher = cipher
        self.retention = retention

    def ensure_indexes(self) -> None:
        """Create the indexes the sweeps and retention need (idempotent)."""
        self.collection.create_index([("status", 1), ("updated_at", 1)], name="status_updated_at")
        self.collection.create_index("expires_at", name="retention_ttl", expireAfterSeconds=0)

    def create(self, request_id: str, vendor: str, payload: dict[str, Any]) -> None:
        """Store a new job as queued; the caller enqueues it next or marks it pending."""
        now = utcnow()
        self.collection.insert_one({
            "_id": request_id,
            "status": JobStatus.QUEUED.value,
            "vendor": vendor,
            "payload": self.cipher.encrypt(orjson.dumps(payload)).decode(),
            "attempts": 0,
            "history": [{"state": JobStatus.QUEUED.value, "at": now}],
            "created_at": now,
            "updated_at": now,
        })

    def get(self, request_id: str) -> dict[str, Any]:
        """Return the job without its payload, or raise JobNotFound."""
        job = self.collection.find_one({"_id": request_id}, PUBLIC_FIELDS)
        if job is None:
            raise JobNotFound(request_id)
        return job

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
    ) -> bool:
        """Move a job to `to` if it is in an allowed previous state; tell whether it moved.

        This is the only writer of `status`. Terminal states erase the payload and start retention.
        """
        sources = ALLOWED_FROM[to] if allowed_from is None else allowed_from
        now = utcnow()
        entry = {"state": to.value, "at": now}
        if detail:
            entry["detail"] = detail
        update: dict[str, Any] = {
            "$set": {**(fields or {}), "status": to.value, "updated_at": now},
            "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}},
        }
        if to.is_terminal:
            update["$set"]["expires_at"] = now + self.retention
            update["$unset"] = {"payload": ""}
        if inc:
            update["$inc"] = inc
        query = {"_id": request_id, "status": {"$in": [state.value for state in sources]}}
        if extra_filter:
            query = {"$and": [query, extra_filter]}
        return self.collection.update_one(query, update).modified_count == 1

    def claim(self, request_id: str, message_id: str) -> dict[str, Any] | None:
        """Mark the job processing for this message and return it with its payload decrypted.

        A redelivery of the same message (a worker crashed, a retry, a deferral) may re-claim a
        job it already holds; any other message finds nothing to do and gets None.
        """
        claimable = {"$or": [
            {"status": {"$in": [JobStatus.PENDING.value, JobStatus.QUEUED.value]}},
            {"status": JobStatus.PROCESSING.value, "message_id": message_id},
        ]}
        moved = self.transition(
            request_id, JobStatus.PROCESSING,
            fields={"message_id": message_id},
            allowed_from=ALLOWED_FROM[JobStatus.PROCESSING] | {JobStatus.PROCESSING},
            extra_filter=claimable,
            inc={"attempts": 1},
        )
        if not moved:
            return None
        job = self.collection.find_one({"_id": request_id})
        if job is None or "payload" not in job:
            return None
        job["payload"] = orjson.loads(self.cipher.decrypt(job["payload"].encode()))
        return job

    def complete(self, request_id: str, result: dict[str, Any], removed_keys: list[str], *, detail: str) -> bool:
        """Store the cleaned result and mark the job complete."""
        return self.transition(
            request_id, JobStatus.COMPLETE, detail=detail,
            fields={"result": result, "removed_keys": removed_keys, "error": None},
        )

    def fail(self, request_id: str, reason: str) -> bool:
        """Mark the job failed with a readable reason."""
        return self.transition(request_id, JobStatus.FAILED, detail=reason, fields={"error": reason})

    def note(self, request_id: str, detail: str, **fields: Any) -> None:
        """Append an event to the job's history without changing its state."""
        update: dict[str, Any] = {
            "$push": {"history": {"$each": [{"event": detail, "at": utcnow()}], "$slice": -HISTORY_LIMIT}},
        }
        if fields:
            update["$set"] = fields
        self.collection.update_one({"_id": request_id}, update)

    def stale_ids(self, status: JobStatus, older_than: timedelta, limit: int) -> list[str]:
        """Return up to `limit` ids of jobs in `status` not updated for `older_than`."""
        cursor = self.collection.find(
            {"status": status.value, "updated_at": {"$lt": utcnow() - older_than}}, {"_id": True},
        ).sort("updated_at", 1).limit(limit)
        return [job["_id"] for job in cursor]
