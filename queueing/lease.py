"""The clock's state in Redis: a lease that keeps one clock active, and what each sweep did last.

Any number of clocks may run. The holder renews the lease every third of it; the others try to
take it whenever it would run out, so one lease after a holder's last renewal another clock
leads, and a holder that stops (SIGTERM) hands it back at once. A holder counts itself the
leader only until its last renewal would expire, so a stalled holder stops sweeping before
anyone else may start. A lease is not a fence: the sweeps' writes are conditional anyway.

The record of sweeps is the hash `{scheduler}:sweeps`: a field per sweep holding a JSON object
(`started_at`, `finished_at`, `duration_ms`, `by`, `counts` or `error`), plus `leader` and
`leader_since`, written when a clock takes the lease.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
import redis

log = logging.getLogger(__name__)

# One hash tag: in a cluster both live on one node, so reading them is one round trip.
LEADER_KEY = "{scheduler}:leader"
SWEEPS_KEY = "{scheduler}:sweeps"
MIN_WAIT_MS = 10

# Extend the lease only while we still hold it: after a stall another clock may own it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class ClockState:
    """Which clock leads, since when, for how much longer, and each sweep's last run."""

    leader: str | None
    leader_since: str | None  # ISO time, if the current leader recorded it
    lease_left_ms: int
    sweeps: dict[str, dict[str, Any]]


def record_sweep(client: redis.Redis, name: str, run: dict[str, Any]) -> None:
    """Record what a sweep's last run did."""
    client.hset(SWEEPS_KEY, name, orjson.dumps(run))


def forget_sweeps(client: redis.Redis, names: list[str]) -> None:
    """Delete the records of sweeps the clock no longer runs."""
    client.hdel(SWEEPS_KEY, *names)


def read_clock(client: redis.Redis) -> ClockState:
    """Read who leads the clocks and what each sweep did last, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.get(LEADER_KEY)
    pipe.pttl(LEADER_KEY)
    pipe.hgetall(SWEEPS_KEY)
    leader, lease_ms, record = pipe.execute()
    record = {key.decode(): value.decode() for key, value in record.items()}
    holder = leader.decode() if leader else None
    since = record.pop("leader_since", None) if record.get("leader") == holder else None
    record.pop("leader", None)
    sweeps = {name: orjson.loads(raw) for name, raw in record.items()}
    return ClockState(holder, since, lease_ms if holder else 0, sweeps)


def clock_identity() -> str:
    """Name this clock process uniquely: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaderLease:
    """Take and renew the scheduler's lease in Redis, and tell whether this clock leads."""

    def __init__(self, client: redis.Redis, lease_s: float, identity: str | None = None) -> None:
        self.client = client
        self.lease_ms = max(int(lease_s * 1000), 1)
        self.identity = identity or clock_identity()
        self.renew = client.register_script(RENEW)
        self.release = client.register_script(RELEASE)
        self.valid_until = 0.0  # time.monotonic() after which we no longer count as leader
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="leader-lease", daemon=True)

    def is_leader(self) -> bool:
        """Tell whether this clock holds the lease right now."""
        return time.monotonic() < self.valid_until

    def try_lead(self) -> bool:
        """Renew the lease if we hold it, or take it if it is free; tell whether we lead."""
        was_leader = self.is_leader()
        asked_at = time.monotonic()  # the lease in Redis starts later, so this errs on the safe side
        held = self.renew(keys=[LEADER_KEY], args=[self.identity, self.lease_ms]) == 1 or bool(
            self.client.set(LEADER_KEY, self.identity, nx=True, px=self.lease_ms)
        )
        self.valid_until = asked_at + self.lease_ms / 1000 if held else 0.0
        if held and not was_leader:
            log.info("clock %s leads the sweeps", self.identity, extra={"leader": self.identity})
            self.client.hset(SWEEPS_KEY, mapping={"leader": self.identity, "leader_since": datetime.now(timezone.utc).isoformat()})
        elif was_leader and not held:
            log.warning("clock %s lost the lease", self.identity, extra={"leader": self.identity})
        return held

    def start(self) -> None:
        """Start renewing in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop renewing and hand the lease back, so another clock takes over at once."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        self.valid_until = 0.0
        try:
            self.release(keys=[LEADER_KEY], args=[self.identity])
        except redis.RedisError as error:
            log.warning("could not release the lease: %s", type(error).__name__)

    def _run(self) -> None:
        renew_every_s = self.lease_ms / 3000
        while not self.stopping.is_set():
            wait_s = renew_every_s
            try:
                if not self.try_lead():
                    # Stand by until the holder's lease would run out, so a dead holder is
                    # replaced one lease after its last renewal, not up to a renewal period later.
                    wait_s = min(renew_every_s, max(self.client.pttl(LEADER_KEY), MIN_WAIT_MS) / 1000)
            except redis.RedisError as error:
                # Leadership lapses on its own when the lease runs out; keep trying.
                log.warning("lease renewal failed: %s", type(error).__name__)
            self.stopping.wait(wait_s)
