"""Remember Idempotency-Keys in Redis for 24 hours, so a repeated submission finds its first job.

Keys are each client's own: two clients may use the same key for different jobs.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
import redis

from service.errors import IdempotencyConflict

KEY_TTL_S = 24 * 3600


class IdempotencyKeys:
    """Map each Idempotency-Key to the request it was first used for, atomically (SET NX)."""

    def __init__(self, client: redis.Redis, encryption_key: str) -> None:
        self.client = client
        # Keyed, so that a fingerprint kept in Redis gives away nothing of the payload it hashes.
        self.fingerprint_key = hashlib.sha256(b"vendorfetch idempotency\x00" + encryption_key.split(",")[0].strip().encode()).digest()

    def claim(self, client: str, key: str, request: dict[str, Any], request_id: str) -> str | None:
        """Tie `key` to this request and return None, or return the request_id it is already tied to.

        Two requests are the same when their JSON is, whatever the key order. Raise
        IdempotencyConflict if the key was used for a different request.
        """
        name = self._name(client, key)
        fingerprint = hmac.new(self.fingerprint_key, orjson.dumps(request, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()
        record = orjson.dumps({"fingerprint": fingerprint, "request_id": request_id})
        if self.client.set(name, record, nx=True, ex=KEY_TTL_S):
            return None
        earlier = self.client.get(name)
        if earlier is None:  # expired between the two calls: the key is free again
            return self.claim(client, key, request, request_id)
        earlier = orjson.loads(earlier)
        if earlier["fingerprint"] != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used with a different body, vendor or callback_url",
            )
        return earlier["request_id"]

    def release(self, client: str, key: str) -> None:
        """Free a key whose job could not be stored, so that the client's retry is a new submission."""
        self.client.delete(self._name(client, key))

    @staticmethod
    def _name(client: str, key: str) -> str:
        return f"{{client:{client}}}:idempotency:{key}"
