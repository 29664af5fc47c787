"""Each client's request rate, counted in Redis and told in the IETF RateLimit headers.

A fixed window of one second per client (`{client:NAME}:requests`, made by its first request
and expiring with its window): every API process counts into the same key. Each response to a
client says its policy and what is left of the window
(draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "requests";q=50;w=1`,
`RateLimit: "requests";r=49;t=1`); a request over the rate is answered 429 with Retry-After.
"""

from __future__ import annotations

import logging
import math

import falcon
import redis

from queueing.batching import Batch
from queueing.nodes import run_script_calls
from service.clients.store import Client
from service.errors import TooManyRequests

log = logging.getLogger(__name__)

WINDOW_MS = 1_000
POLICY = "requests"

#: Count a request in the client's window; return the count and the ms left of the window.
#: KEYS: the client's window.  ARGV: window ms.
COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""


def window_key(client_name: str) -> str:
    """Return the key of a client's request window; its hash tag keeps a client's keys in one cluster slot."""
    return f"{{client:{client_name}}}:requests"


class RequestLimits:
    """Hold each client to its request rate; the requests in flight in a process share one round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.script = client.register_script(COUNT)
        self._count = Batch(self._count_many)

    def check(self, client: Client, resp: falcon.Response) -> None:
        """Count the request and set its RateLimit headers; raise TooManyRequests over the client's rate.

        A client without a rate (`public`) is not counted. With Redis down the request is let
        through: the intake needs Redis anyway and says so.
        """
        if client.rate_per_s is None:
            return
        try:
            count, left_ms = self._count(client.name)
        except redis.RedisError as error:
            log.warning("request rate not checked, Redis unavailable: %s", type(error).__name__)
            return
        reset_s = max(1, math.ceil(left_ms / 1000))
        headers = {
            "RateLimit-Policy": f'"{POLICY}";q={client.rate_per_s};w={WINDOW_MS // 1000}',
            "RateLimit": f'"{POLICY}";r={max(client.rate_per_s - count, 0)};t={reset_s}',
        }
        if count > client.rate_per_s:
            raise TooManyRequests(f"client {client.name!r} may send {client.rate_per_s} requests a second", reset_s, headers)
        resp.set_headers(headers)

    def _count_many(self, names: list[str]) -> list[tuple[int, int]]:
        replies = run_script_calls(self.redis, self.script, [([window_key(name)], [WINDOW_MS]) for name in names])
        return [tuple(reply) for reply in replies]
