"""Look at the job queue in Redis, read-only: which jobs still have a fetch message somewhere.

A message lives in the delay set (waiting for its eta) or in the stream (not yet delivered, or
delivered and pending in the group: acknowledged entries are deleted, so every entry left in the
stream is one of those two).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import dramatiq
import redis

from actors.broker import delay_key, iter_stream, stream_key
from actors.queue import FETCH_ACTOR

PAGE_SIZE = 1_000


def request_ids_in_queue(client: redis.Redis, queue_name: str) -> set[str]:
    """Return the request_ids that have a fetch message in the delay set or the stream."""
    # The delay set first: a message moved from it into the stream meanwhile is still seen there.
    payloads = itertools.chain(_delayed_payloads(client, queue_name), _stream_payloads(client, queue_name))
    return {request_id for payload in payloads if (request_id := _request_id(payload))}


def _delayed_payloads(client: redis.Redis, queue_name: str) -> Iterator[bytes]:
    for member, _eta in client.zscan_iter(delay_key(queue_name), count=PAGE_SIZE):
        yield member.partition(b"|")[2]  # "<random token>|<encoded message>"


def _stream_payloads(client: redis.Redis, queue_name: str) -> Iterator[bytes]:
    for _entry_id, fields in iter_stream(client, stream_key(queue_name), PAGE_SIZE):
        yield fields.get(b"message", b"")


def _request_id(payload: bytes) -> str | None:
    try:
        message = dramatiq.Message.decode(payload)
    except Exception:  # an undecodable entry is the broker's to dead-letter, not ours
        return None
    return message.args[0] if message.actor_name == FETCH_ACTOR and message.args else None
