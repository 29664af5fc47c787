"""Run a sweep on the leading clock only, then log and record what it did (see queueing/lease.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from queueing.lease import LeaderLease, record_sweep
from service.metrics import SWEEP_JOBS
from service.store import utcnow

log = logging.getLogger(__name__)

Sweep = Callable[[], dict[str, int]]


def run_if_leader(lease: LeaderLease, client: redis.Redis, name: str, sweep: Sweep) -> dict[str, Any] | None:
    """Run `sweep` if this clock leads; log and record its counts, and return the record."""
    if not lease.is_leader():
        return None
    started_at, began = utcnow(), time.monotonic()
    record: dict[str, Any] = {"started_at": started_at.isoformat(), "by": lease.identity}
    try:
        record["counts"] = sweep()
    except Exception as error:  # the next run tries again; the record shows why this one failed
        log.exception("sweep %s failed", name, extra={"sweep": name})
        record["error"] = f"{type(error).__name__}: {error}"
    record["finished_at"] = utcnow().isoformat()
    record["duration_ms"] = round((time.monotonic() - began) * 1000, 1)
    if "counts" in record:
        # A run that changed nothing is routine: the frequent ones would drown the log.
        level = logging.INFO if any(record["counts"].values()) else logging.DEBUG
        log.log(level, "sweep %s: %s", name, record["counts"], extra={"sweep": name, **record})
        for action, count in record["counts"].items():
            SWEEP_JOBS.labels(name, action).inc(count)
    try:
        record_sweep(client, name, record)
    except redis.RedisError as error:
        log.warning("could not record sweep %s: %s", name, type(error).__name__)
    return record
