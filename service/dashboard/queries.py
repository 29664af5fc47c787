"""Read what the dashboard shows from MongoDB and Redis; every query is bounded and index-backed.

Nothing here reads a job's payload: job documents are read without it, and whether a payload
is kept (so a retry is possible) is computed inside MongoDB.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from queueing.breaker import CircuitBreaker
from queueing.broker import StreamsBroker
from queueing.deadletters import list_dead_letters
from queueing.keys import dead_key
from queueing.lease import read_clock
from queueing.messages import QUEUE_NAME, request_id_of
from queueing.ratelimit import RateLimiter
from service.errors import JobNotFound
from service.states import TERMINAL, JobStatus
from service.store import PAYLOAD_KEPT, RETRYABLE, JobStore, utcnow
from vendors.registry import Registry, Vendor

PAGE_SIZE = 25
DEAD_LETTERS_SHOWN = 50
GIVEN_UP_SHOWN = 50
CHART_MINUTES = 60
#: The states whose jobs may carry the error of a failed attempt while they are retried.
RETRYING = (JobStatus.QUEUED, JobStatus.PROCESSING)
FAILED_STATES = [state.value for state in RETRYABLE]
#: Decide inside MongoDB whether a job's payload is kept, so that the payload never leaves it.
PAYLOAD_IS_KEPT = {"$ne": [{"$type": "$payload"}, "missing"]}


def stamp(moment: datetime | None) -> str | None:
    """Format a time for operators: UTC, to the second."""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else None


def failure_filter(vendor: str | None, reason: str | None) -> dict[str, Any]:
    """Select failed and timed-out jobs, optionally of one vendor and with `reason` in their error."""
    query: dict[str, Any] = {"status": {"$in": FAILED_STATES}}
    if vendor:
        query["vendor"] = vendor
    if reason:
        query["error"] = {"$regex": re.escape(reason), "$options": "i"}
    return query


class DashboardQueries:
    """Answer the dashboard's questions: how work flows, what each vendor does, what failed."""

    def __init__(
        self, store: JobStore, registry: Registry, limiter: RateLimiter, breaker: CircuitBreaker, broker: StreamsBroker,
    ) -> None:
        self.store = store
        self.registry = registry
        self.limiter = limiter
        self.breaker = breaker
        self.broker = broker

    def overview(self) -> dict[str, Any]:
        """Return jobs per state, the job queue's counts and every vendor's state."""
        jobs = self.store.collection
        return {
            "at": stamp(utcnow()),
            # One count per state: each is answered from the status index, never a collection scan.
            "states": {state.value: jobs.count_documents({"status": state.value}) for state in JobStatus},
            "queue": self.broker.queue_stats(QUEUE_NAME),
            "vendors": [self.vendor_state(vendor) for vendor in self.registry.vendors.values()],
        }

    def vendor_state(self, vendor: Vendor) -> dict[str, Any]:
        """Return a vendor's settings, its use of its limit, its breaker and its last error."""
        usage = self.limiter.usage(vendor)
        breaker, failures = self.breaker.state(vendor)
        limit, period_s = vendor.limit
        last_error = self.last_error(vendor)
        return {
            "name": vendor.name, "mode": vendor.mode, "enabled": vendor.enabled, "rate_limit": vendor.rate_limit,
            "started": usage.started, "quota_pct": round(100 * usage.started / limit), "limit": limit,
            "window_s": period_s, "backlog": usage.backlog, "max_backlog": vendor.max_backlog,
            "wait_s": round(max(usage.new_job_wait_s, usage.paused_s), 1), "paused_s": round(usage.paused_s, 1),
            "breaker": breaker, "breaker_failures": failures,
            "last_error": last_error.get("error"), "last_error_at": stamp(last_error.get("updated_at")),
        }

    def last_error(self, vendor: Vendor) -> dict[str, Any]:
        """Return the error and time of the vendor's latest failed attempt or failed job in the last hour."""
        states = [state.value for state in (*RETRYING, *RETRYABLE)]
        found = self.store.collection.find(
            {"status": {"$in": states}, "updated_at": {"$gte": utcnow() - timedelta(hours=1)},
             "vendor": vendor.name, "error": {"$type": "string"}},
            {"error": True, "updated_at": True},
        ).sort("updated_at", -1).limit(1)
        return next(iter(found), {})

    def throughput(self) -> dict[str, Any]:
        """Return jobs submitted, completed and failed in each minute of the last hour."""
        now = utcnow().replace(second=0, microsecond=0)
        minutes = [now - timedelta(minutes=ago) for ago in range(CHART_MINUTES - 1, -1, -1)]
        series = {name: dict.fromkeys(minutes, 0) for name in ("submitted", "completed", "failed")}
        for row in self.per_minute("created_at", list(JobStatus)):
            series["submitted"][row["_id"]["minute"]] += row["count"]
        for row in self.per_minute("updated_at", TERMINAL):
            name = "completed" if row["_id"]["status"] == JobStatus.COMPLETE.value else "failed"
            series[name][row["_id"]["minute"]] += row["count"]
        return {
            "minutes": [minute.strftime("%H:%M") for minute in minutes],
            **{name: [counts.get(minute, 0) for minute in minutes] for name, counts in series.items()},
            "totals": {name: sum(counts.values()) for name, counts in series.items()},
        }

    def per_minute(self, field: str, statuses) -> list[dict[str, Any]]:
        """Count jobs in `statuses` by the minute of a time field (and status), over the last hour only.

        A job created or finished in the last hour has its `due_at` in it or later (it is never
        before the job's last change), so the match starts from the status index (status, due_at)
        rather than needing an index of its own.
        """
        since = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
        minute = {"$dateTrunc": {"date": f"${field}", "unit": "minute"}}
        return list(self.store.collection.aggregate([
            {"$match": {"status": {"$in": [status.value for status in statuses]}, "due_at": {"$gte": since},
                        field: {"$gte": since}}},
            {"$group": {"_id": {"minute": minute, "status": "$status"}, "count": {"$sum": 1}}},
        ]))

    def failures(self, vendor: str | None, reason: str | None, page: int) -> dict[str, Any]:
        """Return one page of failed and timed-out jobs, newest first, and the dead letters."""
        query = failure_filter(vendor, reason)
        total = self.store.collection.count_documents(query)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(page, 1), pages)
        rows = self.store.collection.aggregate([
            {"$match": query}, {"$sort": {"updated_at": -1}}, {"$skip": (page - 1) * PAGE_SIZE}, {"$limit": PAGE_SIZE},
            {"$project": {"status": True, "vendor": True, "error": True, "attempts": True, "updated_at": True,
                          "retryable": PAYLOAD_IS_KEPT}},
        ])
        return {
            "vendor": vendor or "", "reason": reason or "", "page": page, "pages": pages, "total": total,
            "jobs": [{
                "request_id": row["_id"], "status": row["status"], "vendor": row["vendor"], "error": row.get("error"),
                "attempts": row.get("attempts", 0), "updated_at": stamp(row["updated_at"]), "retryable": row["retryable"],
            } for row in rows],
            "dead_letters": self.dead_letters(),
            "callbacks": self.given_up_callbacks(),
        }

    def given_up_callbacks(self) -> dict[str, Any]:
        """Return how many client callbacks were given up, and the latest of them."""
        total, jobs = self.store.given_up_callbacks(GIVEN_UP_SHOWN)
        return {"total": total, "entries": [{
            "request_id": job["_id"], "vendor": job.get("vendor"), "attempts": job.get("callback_attempts", 0),
            "at": stamp(job.get("callback_attempted_at")), "reason": job.get("callback_error"),
        } for job in jobs]}

    def dead_letters(self) -> dict[str, Any]:
        """Return how many messages the job queue's dead-letter stream holds, and the oldest of them."""
        entries = []
        for dead in list_dead_letters(self.broker.client, QUEUE_NAME, DEAD_LETTERS_SHOWN):
            entries.append({
                "entry_id": dead.entry_id, "dead_at": stamp(datetime.fromtimestamp(dead.dead_at_ms / 1000, tz=timezone.utc)),
                "request_id": request_id_of(dead.message), "reason": dead.reason,
            })
        return {"total": self.broker.client.xlen(dead_key(QUEUE_NAME)), "entries": entries}

    def job(self, request_id: str) -> dict[str, Any] | None:
        """Return what an operator may see of a job (never its payload), or None if there is none."""
        try:
            job = self.store.get(request_id)
        except JobNotFound:
            return None
        created = job["created_at"]
        finished = job["updated_at"] if JobStatus(job["status"]).is_terminal else None
        return {
            "request_id": job["_id"], "status": job["status"], "vendor": job["vendor"],
            "attempts": job.get("attempts", 0), "rerequests": job.get("rerequests", 0),
            "created_at": stamp(created), "updated_at": stamp(job["updated_at"]),
            "took_s": round((finished - created).total_seconds(), 3) if finished else None,
            "webhook_deadline": stamp(job.get("webhook_deadline")), "error": job.get("error"),
            "removed_keys": ", ".join(job.get("removed_keys") or []) or None,
            "result": pretty(job.get("result")), "late_result": pretty(job.get("late_result")),
            "client_callback": "delivered" if job.get("callback_delivered_at") else ("asked" if job.get("callback_url") else None),
            "retryable": job["status"] in FAILED_STATES and self.payload_kept(request_id),
            "history": [{
                "at": stamp(entry["at"]), "after_s": round((entry["at"] - created).total_seconds(), 3),
                "what": entry.get("state") or "note", "detail": entry.get("detail") or entry.get("event"),
            } for entry in job.get("history", [])],
        }

    def payload_kept(self, request_id: str) -> bool:
        """Tell whether the job still has its (encrypted) payload, without reading it."""
        return self.store.collection.count_documents({"_id": request_id, **PAYLOAD_KEPT}, limit=1) == 1

    def scheduler(self) -> dict[str, Any]:
        """Return which clock holds the lease and what each sweep did when it last ran."""
        clock = read_clock(self.broker.client)
        now = utcnow()
        sweeps = []
        for name, run in sorted(clock.sweeps.items()):
            started = datetime.fromisoformat(run["started_at"])
            sweeps.append({
                "name": name, "started_at": stamp(started), "ago_s": round((now - started).total_seconds()),
                "duration_ms": run.get("duration_ms"), "by": run.get("by"), "error": run.get("error"),
                "changes": ", ".join(f"{action} {count}" for action, count in run.get("counts", {}).items()) or None,
            })
        return {
            "leader": clock.leader,
            "leader_since": stamp(datetime.fromisoformat(clock.leader_since)) if clock.leader_since else None,
            "lease_left_s": round(clock.lease_left_ms / 1000, 1) if clock.lease_left_ms > 0 else None, "sweeps": sweeps,
        }


def pretty(value: Any) -> str | None:
    """Render stored (cleaned) data as indented JSON for reading."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() if value is not None else None

