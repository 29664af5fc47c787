"""Each client's jobs waiting for each vendor, so that a client's own cap can refuse it alone.

A sorted set per client and vendor (`{client:NAME}:waiting:VENDOR`) holds the client's jobs that
wait for a slot with that vendor, each scored by the time its slot comes (server time, ms). A job
counts only until then, so the count cannot drift for long: an entry nobody removes (a lost
cancel, a crashed API process) lapses by its slot time at the latest, at most the vendor's
max_wait_s away, and the whole set expires once its last slot has come. A job reserves its place
before its vendor gives it a slot, holding it for max_wait_s at most, and takes its slot's time
once it has one (or gives the place up if the vendor refused it).
"""

from __future__ import annotations

from queueing.nodes import run_script_calls
from queueing.ratelimit_lua import NOW_MS
from service.clients.store import Client
from vendors.registry import Vendor

#: Take a place in the client's backlog with a vendor unless `cap` jobs hold one already;
#: return {1, 0}, or {0, ms until its first waiting job's slot}.
#: KEYS: the client's waiting set for the vendor.  ARGV: cap, request_id, hold ms.
RESERVE = NOW_MS + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 0}
"""

#: Move a reserved place to the time the job's slot comes.
#: KEYS: the client's waiting set for the vendor.  ARGV: request_id, ms until the slot.
SETTLE = NOW_MS + """
redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
"""


def waiting_key(client_name: str, vendor_name: str) -> str:
    """Return the key of a client's waiting jobs for a vendor, under the client's hash tag."""
    return f"{{client:{client_name}}}:waiting:{vendor_name}"


class ClientBacklogs:
    """Reserve, settle and release places in clients' per-vendor backlogs, only for the caps clients have."""

    def __init__(self, redis_client) -> None:
        self.redis = redis_client
        self.reserve_script = redis_client.register_script(RESERVE)
        self.settle_script = redis_client.register_script(SETTLE)

    def reserve_many(self, jobs: list[tuple[Client, Vendor, str]]) -> list[float | None]:
        """Take a place for each (client, vendor, request_id) under the client's cap, in one round trip.

        Return per job None (a place, or no cap to keep), or the seconds until the client's
        earliest waiting job for that vendor starts (its cap is reached).
        """
        capped = [(i, client, vendor, request_id) for i, (client, vendor, request_id) in enumerate(jobs)
                  if client.backlog_cap(vendor.name) is not None]
        refusals: list[float | None] = [None] * len(jobs)
        if not capped:
            return refusals
        calls = [([waiting_key(client.name, vendor.name)], [client.backlog_cap(vendor.name), request_id, round(vendor.max_wait_s * 1000)])
                 for _, client, vendor, request_id in capped]
        for (i, *_), (placed, wait_ms) in zip(capped, run_script_calls(self.redis, self.reserve_script, calls)):
            if not placed:
                refusals[i] = max(wait_ms, 0) / 1000
        return refusals

    def settle_many(self, jobs: list[tuple[Client, Vendor, str, float | None]]) -> None:
        """Date each capped job's place by its slot (seconds away), or give it up where the slot is None."""
        capped = [job for job in jobs if job[0].backlog_cap(job[1].name) is not None]
        if not capped:
            return
        given_up = [(waiting_key(client.name, vendor.name), request_id) for client, vendor, request_id, wait_s in capped if wait_s is None]
        if given_up:
            with self.redis.pipeline(transaction=False) as pipe:
                for key, request_id in given_up:
                    pipe.zrem(key, request_id)
                pipe.execute()
        dated = [([waiting_key(client.name, vendor.name)], [request_id, round(wait_s * 1000)])
                 for client, vendor, request_id, wait_s in capped if wait_s is not None]
        if dated:
            run_script_calls(self.redis, self.settle_script, dated)

    def release(self, client_name: str, vendor_name: str, request_id: str) -> None:
        """Give up a job's place: it was cancelled or never stored."""
        self.redis.zrem(waiting_key(client_name, vendor_name), request_id)
