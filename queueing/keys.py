"""Where a queue lives in Redis; the hash tag keeps all its keys in the stream's cluster slot.

- ``q``          the work stream; one entry per message, field ``message`` = the encoded message.
                 Never trimmed: entries are deleted when acknowledged or dead-lettered.
- ``{q}:delay``  sorted set of delayed messages scored by their eta in ms, each member
                 ``<random token>|<encoded message>`` (the token keeps equal payloads distinct).
- ``{q}:dead``   dead-letter stream (fields ``message``, ``reason``, ``queue``, ``entry_id``,
                 ``dead_at_ms``), capped at about ``dead_letter_maxlen`` entries.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import redis


def stream_key(queue_name: str) -> str:
    """Return the work stream of a queue (the queue name itself, for wire compatibility)."""
    return queue_name


def delay_key(queue_name: str) -> str:
    """Return the sorted set holding the delayed messages of a queue."""
    return f"{{{queue_name}}}:delay"


def dead_key(queue_name: str) -> str:
    """Return the dead-letter stream of a queue."""
    return f"{{{queue_name}}}:dead"


def iter_stream(client: redis.Redis, key: str, page_size: int = 1_000) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Yield a stream's entries (id, fields), oldest first, reading one page at a time."""
    start = "-"
    while True:
        entries = client.xrange(key, min=start, count=page_size)
        yield from entries
        if len(entries) < page_size:
            return
        start = "(" + entries[-1][0].decode()


def is_nogroup(error: redis.ResponseError) -> bool:
    """Tell whether a reply error says the stream or its group is missing."""
    return str(error).startswith("NOGROUP")



def delay_member(payload: bytes) -> bytes:
    """Return the delay-set member that holds an encoded message."""
    return secrets.token_hex(8).encode() + b"|" + payload


def delayed_payload(member: bytes) -> bytes:
    """Return the encoded message a delay-set member holds."""
    return member.partition(b"|")[2]
