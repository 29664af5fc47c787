"""Remember Idempotency-Keys in Redis for 24 hours, so a repeated submission finds its first job."""

from __future__ import annotations

import orjson
import redis

from service.errors import IdempotencyConflict

KEY_TTL_S = 24 * 3600


class IdempotencyKeys:
    """Map each Idempotency-Key to the request it was first used for, atomically (SET NX)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def claim(self, key: str, fingerprint: str, request_id: str) -> str | None:
        """Tie `key` to this request and return None, or return the request_id it is already tied to.

        Raise IdempotencyConflict if the key was used for a different request.
        """
        name = self._name(key)
        record = orjson.dumps({"fingerprint": fingerprint, "request_id": request_id})
        if self.client.set(name, record, nx=True, ex=KEY_TTL_S):
            return None
        earlier = self.client.get(name)
        if earlier is None:  # expired between the two calls: the key is free again
            return self.claim(key, fingerprint, request_id)
        earlier = orjson.loads(earlier)
        if earlier["fingerprint"] != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used with a different body, vendor or callback_url",
            )
        return earlier["request_id"]

    def release(self, key: str) -> None:
        """Free a key whose job could not be stored, so that the client's retry is a new submission."""
        self.client.delete(self._name(key))

    @staticmethod
    def _name(key: str) -> str:
        return f"idempotency:{key}"
