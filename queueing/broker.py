"""A Dramatiq broker on Redis Streams (keys in queueing/keys.py, delivery in queueing/consumer.py).

One consumer group per queue; every consumer has a unique name.

Guarantees:

- At-least-once delivery.  An entry stays pending until acked; one held by a consumer that died
  is claimed again (``XAUTOCLAIM``) after ``visibility_timeout_ms``.  A consumer refreshes the
  claims of every entry it holds, so a slow message is not handed to a second consumer.
- An entry delivered more than ``max_deliveries`` times without an ack is dead-lettered, as is
  a nacked message; ``on_dead_letter(message, reason)`` is called for both.
- Messages prefetched but never started are put back at shutdown (``requeue`` and ``close``).
- Delays never park messages in worker memory: no ``.DQ`` queues are declared, delayed messages
  wait in Redis and reach the stream without an ``eta`` option.
- Every write that changes a queue (enqueue, ack, dead-letter, requeue, the scripts' moves)
  counts only once ``wait_replicas`` replicas hold it, and is tried again through an outage for
  ``outage_retry_s``.  A write tried again may have been applied the first time: a message can
  then be queued or delivered twice, never lost.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial

import dramatiq
import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout, QueueNotFound

from queueing import broker_lua
from queueing.batching import Batch
from queueing.consumer import StreamsConsumer
from queueing.keys import dead_key, delay_key, delay_member, delayed_payload, iter_stream, stream_key
from queueing.nodes import on_owner, run_script_calls
from queueing.outages import OUTAGE_ERRORS, ride_out

logger = logging.getLogger(__name__)

DeadLetterHandler = Callable[[dramatiq.Message, str], None]

DEFAULT_GROUP = "dramatiq"
#: How many entries one read of a stream or delay set returns.
PAGE_SIZE = 1_000


class StreamsBroker(Broker):
    """Deliver Dramatiq messages through Redis Streams consumer groups."""

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | redis.RedisCluster | None = None,
        middleware: list[dramatiq.Middleware] | None = None,
        group: str = DEFAULT_GROUP,
        visibility_timeout_ms: int = 60_000,
        max_deliveries: int = 5,
        dead_letter_maxlen: int = 10_000,
        dead_consumer_idle_ms: int = 3_600_000,
        on_dead_letter: DeadLetterHandler | None = None,
        max_connections: int = 50,
        wait_replicas: int = 0,
        outage_retry_s: float = 0.0,
    ) -> None:
        super().__init__(middleware=middleware)
        self.owns_client = client is None
        if client is None:
            # The default pool raises once max_connections are in use; this one waits instead.
            pool = redis.BlockingConnectionPool.from_url(url or "redis://127.0.0.1:6379/0", max_connections=max_connections)
            client = redis.Redis(connection_pool=pool)
        self.client = client
        self.group = group
        self.visibility_timeout_ms = visibility_timeout_ms
        self.max_deliveries = max_deliveries
        self.dead_letter_maxlen = dead_letter_maxlen
        self.dead_consumer_idle_ms = dead_consumer_idle_ms
        self.on_dead_letter = on_dead_letter
        self.wait_replicas = wait_replicas
        self.outage_retry_s = outage_retry_s
        self.queues: set[str] = set()
        # Per queue: the acks of this process's worker threads share their round trips.
        self.acks: dict[str, Batch] = {}
        # register_script only hashes the source; nothing touches the server until first use.
        self.scripts = {
            name: client.register_script(getattr(broker_lua, name))
            for name in ("ACK", "MOVE_DUE", "RECOVER", "REFRESH", "REQUEUE", "DEAD_LETTER", "PRUNE_CONSUMERS")
        }

    def close(self) -> None:
        """Release the connection pool, unless the client was handed in."""
        if self.owns_client:
            self.client.close()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30_000) -> StreamsConsumer:
        """Return a consumer of a declared queue."""
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)
        return StreamsConsumer(self, queue_name, prefetch, timeout)

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue (no delay queue: delays live in Redis, not in worker memory)."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.acks[queue_name] = Batch(partial(self.ack_entries, queue_name))
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        """Return the names of the declared queues."""
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        """Return no delay queues, so that workers never hold delayed messages in memory."""
        return set()

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        """Add a message to its queue's stream, or to its delay set when delay (ms) is given."""
        return self.enqueue_many([(message, delay)])[0]

    def enqueue_many(self, messages: list[tuple[dramatiq.Message, int | None]]) -> list[dramatiq.Message]:
        """Enqueue several messages, each as `enqueue` would, in one round trip; return them as enqueued."""
        enqueued = [(*self._prepared(message, delay), delay) for message, delay in messages]
        for message, _, delay in enqueued:
            self.emit_before("enqueue", message, delay)
        # One round trip per queue: a cluster keeps each queue's keys on one node.
        for queue_name in dict.fromkeys(message.queue_name for message, _, _ in enqueued):
            entries = [(message, payload, delay) for message, payload, delay in enqueued if message.queue_name == queue_name]
            for reply in self.write(stream_key(queue_name), partial(self._add, entries)):
                if isinstance(reply, Exception):
                    raise reply
        for message, _, delay in enqueued:
            self.emit_after("enqueue", message, delay)
        return [message for message, _, _ in enqueued]

    @staticmethod
    def _add(entries: list[tuple[dramatiq.Message, bytes, int | None]], pipe: redis.client.Pipeline) -> None:
        """Queue the writes that add prepared messages to their stream, or delay set if delayed."""
        for message, payload, delay in entries:
            if delay:
                pipe.zadd(delay_key(message.queue_name), {delay_member(payload): message.options["eta"]})
            else:
                pipe.xadd(stream_key(message.queue_name), {"message": payload})

    @staticmethod
    def _prepared(message: dramatiq.Message | MessageProxy, delay: int | None) -> tuple[dramatiq.Message, bytes]:
        """Return the message as enqueued (with its eta, if delayed) and its payload, which carries no eta."""
        if isinstance(message, MessageProxy):  # Retries and Callbacks hand back the proxy.
            message = message._message
        message = dataclasses.replace(message, options={key: value for key, value in message.options.items() if key != "eta"})
        payload = message.encode()
        if delay:
            message = message.copy(options={"eta": current_millis() + delay})
        return message, payload

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue, delayed ones included (dead letters stay)."""
        self.client.delete(stream_key(queue_name), delay_key(queue_name))

    def flush_all(self) -> None:
        """Drop every message of every declared queue."""
        for queue_name in self.queues:
            self.flush(queue_name)

    def join(self, queue_name: str, *, interval: int = 100, timeout: int | None = None) -> None:
        """Wait until a queue holds no message, pending or delayed; raise QueueJoinTimeout after timeout ms."""
        deadline = timeout and time.monotonic() + timeout / 1000
        while self.queue_size(queue_name):
            if deadline and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000)

    def queue_size(self, queue_name: str) -> int:
        """Count a queue's messages not yet acknowledged, delayed ones included."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xlen(stream_key(queue_name))
            pipe.zcard(delay_key(queue_name))
            return sum(pipe.execute())

    def ack_entries(self, queue_name: str, entry_ids: list[str]) -> list[None]:
        """Acknowledge and delete entries of a queue's stream with one script call."""
        self.run_script("ACK", [stream_key(queue_name)], [self.group, *entry_ids])
        return [None] * len(entry_ids)

    def run_script(self, name: str, keys: list[str], args: list) -> object:
        """Run one of the broker's scripts as a write (see `write`)."""
        [reply] = self.ride_out(lambda: run_script_calls(self.client, self.scripts[name], [(keys, args)], self.wait_replicas))
        return reply

    def write(self, key: str, queue: Callable[[redis.client.Pipeline], object]) -> list:
        """Send the writes `queue` adds to a pipeline, all on `key`'s slot, in one round trip; return the replies.

        With wait_replicas, the writes count only once that many replicas hold them.
        """
        return self.ride_out(lambda: on_owner(self.client, key, queue, self.wait_replicas))

    def ride_out(self, call: Callable[[], list]) -> list:
        """Call `call` through an outage for outage_retry_s at most; then raise the outage as ConnectionClosed."""
        try:
            return ride_out(call, self.outage_retry_s)
        except OUTAGE_ERRORS as e:
            raise ConnectionClosed(e) from None

    def queue_stats(self, queue_name: str) -> dict[str, int]:
        """Count a queue's messages in each place (depth, pending, delayed, dead_letters) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(stream_key(queue_name))
        pipe.xpending(stream_key(queue_name), self.group)
        pipe.zcard(delay_key(queue_name))
        pipe.xlen(dead_key(queue_name))
        # An error reply counts as 0: NOGROUP before the queue's first use.
        depth, pending, delayed, dead = pipe.execute(raise_on_error=False)
        pending = pending["pending"] if isinstance(pending, dict) else 0
        return {name: reply if isinstance(reply, int) else 0
                for name, reply in (("depth", depth), ("pending", pending), ("delayed", delayed), ("dead_letters", dead))}

    def queued_messages(self, queue_name: str) -> Iterator[dramatiq.Message]:
        """Yield every message of a queue not yet acknowledged, delayed ones first; skip undecodable entries.

        The delay set is read first: a message moved from it into the stream meanwhile is still seen there.
        """
        delayed = (delayed_payload(member) for member, _eta in self.client.zscan_iter(delay_key(queue_name), count=PAGE_SIZE))
        in_stream = (fields.get(b"message", b"") for _, fields in iter_stream(self.client, stream_key(queue_name), PAGE_SIZE))
        for payload in itertools.chain(delayed, in_stream):
            try:
                yield dramatiq.Message.decode(payload)
            except Exception:  # an undecodable entry is the consumer's to dead-letter
                continue

    def ensure_group(self, queue_name: str) -> None:
        """Create the queue's consumer group (and stream) unless it exists."""
        try:
            # Id 0, not $: whoever creates the group must not skip entries added before.
            self.client.xgroup_create(stream_key(queue_name), self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    def dead_lettered(self, message: dramatiq.Message, reason: str) -> None:
        """Tell the application that a message went to the dead-letter stream."""
        logger.warning("Message %s dead-lettered: %s", message.message_id, reason)
        if self.on_dead_letter is None:
            return
        try:
            self.on_dead_letter(message, reason)
        except Exception:
            logger.exception("on_dead_letter failed for message %s.", message.message_id)

