"""What the dashboard's Clients page shows: each client's jobs by state, its share of each vendor lately, its keys."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import redis

from queueing.ratelimit import RateLimiter
from service.clients.store import Client, ClientStore
from service.dashboard.queries import stamp
from service.states import JobStatus
from service.store import JobStore, utcnow
from vendors.registry import Registry

#: A job starts within its vendor's max_wait_s of its submission: the starts of the last hour are
#: read from the jobs submitted in the last two, through the client's list index.
STARTS_LOOKBACK = timedelta(hours=2)
PERIODS = ("last_minute", "last_hour")


class ClientQueries:
    """Read what the Clients page shows, from the job store, the client store and the vendors' lines."""

    def __init__(self, store: JobStore, clients: ClientStore, registry: Registry, limiter: RateLimiter) -> None:
        self.store = store
        self.clients = clients
        self.registry = registry
        self.limiter = limiter

    def overview(self) -> dict[str, Any]:
        now = utcnow()
        clients = [self.client(client, now) for client in self.clients.all()]
        add_shares(clients, self.lines())
        return {"at": stamp(now), "clients": clients}

    def lines(self) -> dict[str, dict[str, int]] | None:
        """Return how many jobs each client has in each vendor's line, or None if Redis cannot tell now."""
        try:
            return {vendor.name: self.limiter.in_line(vendor) for vendor in self.registry.vendors.values()}
        except redis.RedisError:
            return None

    def client(self, client: Client, now: datetime) -> dict[str, Any]:
        """Return one client's settings, jobs by state, starts per vendor in the last minute and hour, and keys."""
        counts = {row["_id"]: row["count"] for row in self.store.collection.aggregate([
            {"$match": {"client": client.name}}, {"$group": {"_id": "$status", "count": {"$sum": 1}}},
        ])}
        return {
            "name": client.name, "weight": client.weight, "rate_per_s": client.rate_per_s, "backlog_caps": client.backlog_caps,
            "states": {state.value: counts.get(state.value, 0) for state in JobStatus},
            "starts": self.starts(client.name, now),
            "keys": [{"prefix": key["prefix"], "created_at": stamp(key["created_at"]), "revoked_at": stamp(key.get("revoked_at"))}
                     for key in self.clients.keys_of(client.name)],
        }

    def starts(self, client_name: str, now: datetime) -> list[dict[str, Any]]:
        """Count the client's calls to each vendor that started in the last minute and the last hour, from job histories."""
        minute, hour = Counter(), Counter()
        recent = {"client": client_name, "created_at": {"$gte": now - STARTS_LOOKBACK}}
        for job in self.store.collection.find(recent, {"vendor": True, "history": True}):
            for entry in job.get("history", []):
                if entry.get("state") == JobStatus.PROCESSING.value and entry["at"] >= now - timedelta(hours=1):
                    hour[job["vendor"]] += 1
                    minute[job["vendor"]] += entry["at"] >= now - timedelta(minutes=1)
        return [{"vendor": vendor, "last_minute": minute[vendor], "last_hour": hour[vendor]} for vendor in sorted(hour)]


def add_shares(clients: list[dict[str, Any]], lines: dict[str, dict[str, int]] | None) -> None:
    """Give each client's row per vendor its share of the vendor's starts, its jobs in line, and its weighted share.

    The weighted share is what fair queuing gives the client while it has jobs in line: its weight
    over the weights of every client with jobs in that vendor's line now.
    """
    weights = {client["name"]: client["weight"] for client in clients}
    totals: Counter = Counter()  # (vendor, period) -> starts of every client
    for client in clients:
        for row in client["starts"]:
            for period in PERIODS:
                totals[row["vendor"], period] += row[period]
    for client in clients:
        rows = {row["vendor"]: row for row in client["starts"]}
        for vendor, line in (lines or {}).items():
            if client["name"] in line:
                rows.setdefault(vendor, {"vendor": vendor, **dict.fromkeys(PERIODS, 0)})
        for vendor, row in rows.items():
            for period in PERIODS:
                row[f"share_{period}"] = fraction(row[period], totals[vendor, period])
            line = None if lines is None else lines.get(vendor, {})
            row["in_line"] = None if line is None else line.get(client["name"], 0)
            row["weighted_share"] = fraction(client["weight"], sum(weights.get(name, 1) for name in line)) if row["in_line"] else None
        client["starts"] = [rows[vendor] for vendor in sorted(rows)]


def fraction(part: int, whole: int) -> float | None:
    return part / whole if whole else None
