"""Inspect, redrive and purge a queue's dead-letter stream.

Usage (reads REDIS_URL)::

    python -m queueing.deadletters list    --queue job-queue [--count 100]
    python -m queueing.deadletters redrive --queue job-queue [ENTRY_ID ...]
    python -m queueing.deadletters purge   --queue job-queue

With REDIS_CLUSTER=true, REDIS_URL is any one node of the cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from collections.abc import Iterator, Sequence

import dramatiq
import redis

from queueing.connection import connect_redis
from queueing.keys import dead_key, iter_stream, stream_key

#: Options of a failed run that must not follow a redriven message (it gets a fresh retry budget).
SPENT_OPTIONS = frozenset({"retries", "traceback", "requeue_timestamp", "eta"})
PAGE_SIZE = 100


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One entry of a dead-letter stream."""

    entry_id: str
    reason: str
    dead_at_ms: int
    payload: bytes

    @property
    def message(self) -> dramatiq.Message | None:
        """Decode the dead message, or return None if it is not a Dramatiq message."""
        try:
            return dramatiq.Message.decode(self.payload)
        except Exception:
            return None

    def describe(self) -> str:
        """Return one line for humans."""
        at = datetime.datetime.fromtimestamp(self.dead_at_ms / 1000, datetime.UTC).isoformat(timespec="seconds")
        message = self.message
        what = f"{message.message_id} {message}" if message else "<undecodable>"
        return f"{self.entry_id}  {at}  {what}  reason: {self.reason}"


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    """Build a DeadLetter from a raw stream entry."""
    return DeadLetter(
        entry_id=entry_id.decode(),
        reason=fields.get(b"reason", b"").decode(errors="replace"),
        dead_at_ms=int(fields.get(b"dead_at_ms", b"0")),
        payload=fields.get(b"message", b""),
    )


def iter_dead_letters(client: redis.Redis, queue_name: str) -> Iterator[DeadLetter]:
    """Yield a queue's dead letters, oldest first, one page at a time."""
    for entry_id, fields in iter_stream(client, dead_key(queue_name), PAGE_SIZE):
        yield parse_entry(entry_id, fields)


def list_dead_letters(client: redis.Redis, queue_name: str, count: int = 100) -> list[DeadLetter]:
    """Return up to count of a queue's dead letters, oldest first."""
    return [dead for dead, _ in zip(iter_dead_letters(client, queue_name), range(count))]


def redrive(client: redis.Redis, queue_name: str, entry_ids: Sequence[str] = ()) -> int:
    """Move dead letters (all, or those listed) back to the work stream; return how many moved."""
    wanted = set(entry_ids)
    moved = 0
    for dead in list(iter_dead_letters(client, queue_name)):
        message = dead.message
        if (wanted and dead.entry_id not in wanted) or message is None:
            continue
        options = {key: value for key, value in message.options.items() if key not in SPENT_OPTIONS}
        payload = dataclasses.replace(message, options=options).encode()
        # One transaction: the message is either still dead or back in the queue, never both or neither.
        with client.pipeline(transaction=True) as pipe:
            pipe.xadd(stream_key(queue_name), {"message": payload})
            pipe.xdel(dead_key(queue_name), dead.entry_id)
            pipe.execute()
        moved += 1
    return moved


def purge(client: redis.Redis, queue_name: str, entry_ids: Sequence[str] = ()) -> int:
    """Delete a queue's dead letters (all, or those listed); return how many were deleted."""
    if entry_ids:
        return client.xdel(dead_key(queue_name), *entry_ids)
    with client.pipeline(transaction=True) as pipe:
        pipe.xlen(dead_key(queue_name))
        pipe.delete(dead_key(queue_name))
        held, _ = pipe.execute()
    return held


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dead-letter command line."""
    parser = argparse.ArgumentParser(prog="python -m queueing.deadletters", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "redrive", "purge"])
    parser.add_argument("entry_ids", nargs="*", help="redrive or purge only these dead-letter entry ids")
    parser.add_argument("--queue", default="job-queue")
    parser.add_argument("--count", type=int, default=100, help="list at most this many")
    args = parser.parse_args(argv)
    if not os.environ.get("REDIS_URL"):
        parser.error("REDIS_URL is not set")
    client = connect_redis(os.environ["REDIS_URL"], os.environ.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes"))
    if args.command == "list":
        for dead in list_dead_letters(client, args.queue, args.count):
            print(dead.describe())
    elif args.command == "redrive":
        print(f"redriven: {redrive(client, args.queue, args.entry_ids)}")
    else:
        print(f"purged: {purge(client, args.queue, args.entry_ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
