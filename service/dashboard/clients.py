"""What the dashboard's Clients page shows: each client's jobs by state, its starts per vendor lately, its keys."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from service.clients.store import Client, ClientStore
from service.dashboard.queries import stamp
from service.states import JobStatus
from service.store import JobStore, utcnow

#: A job starts within its vendor's max_wait_s of its submission: the starts of the last hour are
#: read from the jobs submitted in the last two, through the client's list index.
STARTS_LOOKBACK = timedelta(hours=2)


class ClientQueries:
    """Read what the Clients page shows, from the job store and the client store."""

    def __init__(self, store: JobStore, clients: ClientStore) -> None:
        self.store = store
        self.clients = clients

    def overview(self) -> dict[str, Any]:
        now = utcnow()
        return {"at": stamp(now), "clients": [self.client(client, now) for client in self.clients.all()]}

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
