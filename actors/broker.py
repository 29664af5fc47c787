"""A Dramatiq broker on Redis Streams.

Keys of a queue ``q`` (the hash tag keeps all three in the stream's cluster slot):

- ``q``          the work stream; one entry per message, field ``message`` = the encoded message.
                 Never trimmed: entries are deleted when acknowledged or dead-lettered.
- ``{q}:delay``  sorted set of delayed messages scored by their eta in ms; consumers move due
                 members into the stream atomically (Lua), so no extra process is needed.
- ``{q}:dead``   dead-letter stream (fields ``message``, ``reason``, ``queue``, ``entry_id``,
                 ``dead_at_ms``), capped at about ``dead_letter_maxlen`` entries.

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
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import dramatiq
import redis
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout, QueueNotFound

from actors import broker_lua

logger = logging.getLogger(__name__)

DeadLetterHandler = Callable[[dramatiq.Message, str], None]

DEFAULT_GROUP = "dramatiq"
#: How many due delayed messages one script call moves.
DELAY_BATCH_SIZE = 500
#: How often a consumer deletes dead consumers of its group, at most.
PRUNE_INTERVAL_MS = 60_000
#: The longest XREADGROUP BLOCK, kept well under redis-py's default 5 s socket timeout.
MAX_BLOCK_MS = 1_000
#: How often a consumer looks for due delayed messages that others added (retries, deferrals):
#: the lateness of a delayed message is at most this.
DELAY_CHECK_INTERVAL_MS = 100

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)


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


class StreamsBroker(Broker):
    """Deliver Dramatiq messages through Redis Streams consumer groups."""

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        middleware: list[dramatiq.Middleware] | None = None,
        group: str = DEFAULT_GROUP,
        visibility_timeout_ms: int = 60_000,
        max_deliveries: int = 5,
        dead_letter_maxlen: int = 10_000,
        dead_consumer_idle_ms: int = 3_600_000,
        on_dead_letter: DeadLetterHandler | None = None,
        max_connections: int = 50,
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
        self.queues: set[str] = set()
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
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for message, payload, delay in enqueued:
                    if delay:
                        member = secrets.token_hex(8).encode() + b"|" + payload
                        pipe.zadd(delay_key(message.queue_name), {member: message.options["eta"]})
                    else:
                        pipe.xadd(stream_key(message.queue_name), {"message": payload})
                pipe.execute()
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None
        for message, _, delay in enqueued:
            self.emit_after("enqueue", message, delay)
        return [message for message, _, _ in enqueued]

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


class StreamMessageProxy(MessageProxy):
    """A delivered message that remembers its stream entry id (never stored in its options)."""

    def __init__(self, message: dramatiq.Message, entry_id: str) -> None:
        super().__init__(message)
        self.entry_id = entry_id


def new_consumer_name() -> str:
    """Return a consumer name unique to this host, process, thread and instance."""
    return f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"


def failure_reason(message: MessageProxy) -> str:
    """Describe why a message is being rejected."""
    exception = getattr(message, "_exception", None)
    if exception is None:
        return "nacked"
    return f"{type(exception).__name__}: {exception}"


class _Pending:
    """One item waiting in a GroupCommit."""

    __slots__ = ("item", "done", "error")

    def __init__(self, item: str) -> None:
        self.item = item
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Send the items of concurrent callers in one call, each caller returning once its item is sent.

    The first caller sends at once; those arriving meanwhile are sent together by the next one,
    so a busy worker acks many messages per round trip and an idle one adds no latency.
    """

    def __init__(self, send: Callable[[list[str]], object]) -> None:
        self.send = send
        self.cond = threading.Condition()
        self.waiting: list[_Pending] = []
        self.sending = False

    def commit(self, item: str) -> None:
        """Send item, alone or with others; raise what sending raised."""
        pending = _Pending(item)
        with self.cond:
            self.waiting.append(pending)
            while self.sending and not pending.done:
                self.cond.wait()
            leader = not pending.done
            if leader:
                self.sending = True
                batch, self.waiting = self.waiting, []
        if leader:
            self.send_batch(batch)
        if pending.error is not None:
            raise pending.error

    def send_batch(self, batch: list[_Pending]) -> None:
        """Send a batch and wake its callers with the outcome."""
        error = None
        try:
            self.send([pending.item for pending in batch])
        except BaseException as e:
            error = e
        with self.cond:
            for pending in batch:
                pending.done, pending.error = True, error
            self.sending = False
            self.cond.notify_all()


class StreamsConsumer(Consumer):
    """Iterate over one queue's stream as a member of its consumer group."""

    def __init__(self, broker: StreamsBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.client = broker.client
        self.queue_name = queue_name
        self.stream = stream_key(queue_name)
        self.prefetch = max(prefetch, 1)
        self.batch_size = max(self.prefetch // 2, 1)
        self.timeout_ms = max(timeout, 1)
        self.name = new_consumer_name()
        self.buffer: deque[StreamMessageProxy] = deque()  # fetched, not yet returned by __next__
        self.held: set[str] = set()  # returned by __next__, not yet acked, nacked or requeued
        self.lock = threading.Condition()
        self.acks = GroupCommit(self.ack_entries)
        self.group_ready = False
        self.claim_cursor = "0-0"
        self.claim_interval_ms = max(broker.visibility_timeout_ms // 4, 10)
        self.next_claim_ms = 0
        self.next_delay_check_ms = 0
        self.next_prune_ms = current_millis() + min(PRUNE_INTERVAL_MS, broker.dead_consumer_idle_ms)

    def __next__(self) -> StreamMessageProxy | None:
        """Return the next message, or None after about the consumer timeout."""
        deadline_ms = current_millis() + self.timeout_ms
        try:
            if not self.buffer:
                self.fill(deadline_ms)
            else:
                self.maintain()
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None
        if not self.buffer:
            return None
        proxy = self.buffer.popleft()
        with self.lock:
            self.held.add(proxy.entry_id)
        return proxy

    def fill(self, deadline_ms: int) -> None:
        """Fetch up to the free prefetch room, blocking until deadline_ms at most."""
        while not self.buffer and current_millis() < deadline_ms:
            self.maintain()
            room = self.wait_for_room(self.wake_up_ms(deadline_ms))
            if room and not self.buffer:
                self.read(room, self.wake_up_ms(deadline_ms) - current_millis())

    def wake_up_ms(self, deadline_ms: int) -> int:
        """Return when the next fetch must return: at the deadline, the next chore, or MAX_BLOCK_MS."""
        return min(deadline_ms, self.next_claim_ms, self.next_delay_check_ms, current_millis() + MAX_BLOCK_MS)

    def wait_for_room(self, until_ms: int) -> int:
        """Wait until half the prefetch is free; return the free room, or 0 if it never was."""
        # Fetching in batches rather than one message per ack saves round trips; the other half
        # of the prefetch keeps the worker threads busy meanwhile.
        with self.lock:
            enough = lambda: self.room() >= self.batch_size  # noqa: E731
            self.lock.wait_for(enough, timeout=max(until_ms - current_millis(), 0) / 1000)
            return self.room() if enough() else 0

    def room(self) -> int:
        """Count how many more messages this consumer may fetch."""
        return self.prefetch - len(self.held) - len(self.buffer)

    def read(self, count: int, block_ms: int) -> None:
        """Read new entries of the group into the buffer."""
        try:
            # BLOCK 0 would mean forever; the consumer thread needs its gaps.
            reply = self.client.xreadgroup(self.broker.group, self.name, {self.stream: ">"}, count=count, block=max(block_ms, 1))
        except redis.ResponseError as e:
            self.recreate_group_if_missing(e)
            return
        for _stream, entries in reply or ():
            self.buffer_entries(entries)

    def buffer_entries(self, entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Decode entries into the buffer; dead-letter those that are not Dramatiq messages."""
        for entry_id, fields in entries:
            entry_id = entry_id.decode()
            try:
                message = dramatiq.Message.decode(fields[b"message"])
            except Exception as e:
                self.dead_letter(entry_id, fields.get(b"message", b""), f"undecodable entry: {e}")
                continue
            self.buffer.append(StreamMessageProxy(message, entry_id))

    def recreate_group_if_missing(self, error: redis.ResponseError) -> None:
        """Recreate the group when the stream was deleted (e.g. by flush); re-raise other errors."""
        if not is_nogroup(error):
            raise error
        self.group_ready = False
        self.broker.ensure_group(self.queue_name)
        self.group_ready = True

    def maintain(self) -> None:
        """Run the chores that are due: group creation, delays, claims, pruning."""
        if not self.group_ready:
            self.broker.ensure_group(self.queue_name)
            self.group_ready = True
        now_ms = current_millis()
        try:
            if now_ms >= self.next_delay_check_ms:
                self.move_due_delays(now_ms)
            if now_ms >= self.next_claim_ms:
                self.next_claim_ms = now_ms + self.claim_interval_ms
                self.refresh_claims()
                self.recover()
            if now_ms >= self.next_prune_ms:
                self.next_prune_ms = now_ms + min(PRUNE_INTERVAL_MS, self.broker.dead_consumer_idle_ms)
                self.prune_consumers(self.broker.dead_consumer_idle_ms, "")
        except redis.ResponseError as e:
            self.recreate_group_if_missing(e)

    def move_due_delays(self, now_ms: int) -> None:
        """Move due delayed messages into the stream; schedule the next check."""
        keys = [self.stream, delay_key(self.queue_name)]
        moved, next_eta = DELAY_BATCH_SIZE, None
        while moved == DELAY_BATCH_SIZE:
            moved, next_eta = self.broker.scripts["MOVE_DUE"](keys=keys, args=[now_ms, DELAY_BATCH_SIZE])
        # Others may add earlier delays at any time, so look again soon.
        self.next_delay_check_ms = now_ms + min(self.timeout_ms, DELAY_CHECK_INTERVAL_MS)
        if next_eta is not None:
            self.next_delay_check_ms = min(self.next_delay_check_ms, int(float(next_eta)))

    def refresh_claims(self) -> None:
        """Keep the entries this consumer holds from being claimed by another consumer."""
        with self.lock:
            entry_ids = [*self.held, *(proxy.entry_id for proxy in self.buffer)]
        if not entry_ids:
            return
        lost = self.broker.scripts["REFRESH"](keys=[self.stream], args=[self.broker.group, self.name, *entry_ids])
        if lost:
            # We stalled past the visibility timeout and another consumer claimed them: stop
            # refreshing them (the owner does), and let their ack still settle them.
            logger.warning("Lost the claim on %d entries of %r to another consumer.", len(lost), self.queue_name)
            lost_ids = {entry_id.decode() for entry_id in lost}
            self.buffer = deque(proxy for proxy in self.buffer if proxy.entry_id not in lost_ids)
            self.release(lost_ids)

    def recover(self) -> None:
        """Claim entries left by dead consumers; dead-letter the poison ones."""
        room = self.room()
        if room <= 0:
            return
        broker = self.broker
        keys = [self.stream, dead_key(self.queue_name)]
        args = [
            broker.group, self.name, broker.visibility_timeout_ms, self.claim_cursor, room,
            broker.max_deliveries, broker.dead_letter_maxlen, self.queue_name, current_millis(),
        ]
        cursor, live, dead = broker.scripts["RECOVER"](keys=keys, args=args)
        self.claim_cursor = cursor.decode()
        self.buffer_entries((entry_id, dict(zip(fields[::2], fields[1::2]))) for entry_id, fields in live)
        for _entry_id, payload, reason in dead:
            self.report_dead(payload, reason.decode())

    def report_dead(self, payload: bytes | None, reason: str) -> None:
        """Call the broker's dead-letter handler for an encoded message, if it decodes."""
        try:
            message = dramatiq.Message.decode(payload or b"")
        except Exception:
            logger.error("Dead-lettered an undecodable entry of %r: %s", self.queue_name, reason)
            return
        self.broker.dead_lettered(message, reason)

    def prune_consumers(self, min_idle_ms: int, name: str) -> int:
        """Delete idle consumers of the group that hold no pending entry."""
        return self.broker.scripts["PRUNE_CONSUMERS"](keys=[self.stream], args=[self.broker.group, min_idle_ms, name])

    def ack(self, message: StreamMessageProxy) -> None:
        """Acknowledge and delete a processed message's entry."""
        try:
            self.acks.commit(message.entry_id)
        except redis.ResponseError as e:
            if not is_nogroup(e):  # The stream was flushed: nothing left to acknowledge.
                raise
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None
        finally:
            self.release([message.entry_id])

    def ack_entries(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete entries with one script call."""
        self.broker.scripts["ACK"](keys=[self.stream], args=[self.broker.group, *entry_ids])

    def nack(self, message: StreamMessageProxy) -> None:
        """Move a failed message to the dead-letter stream with the reason it failed."""
        reason = failure_reason(message)
        try:
            settled = self.dead_letter(message.entry_id, message._message.encode(), reason)
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None
        finally:
            self.release([message.entry_id])
        if settled:
            self.broker.dead_lettered(message._message, reason)

    def dead_letter(self, entry_id: str, payload: bytes, reason: str) -> bool:
        """Move a pending entry to the dead-letter stream; tell whether it was still pending."""
        broker = self.broker
        keys = [self.stream, dead_key(self.queue_name)]
        args = [broker.group, entry_id, broker.dead_letter_maxlen, payload, reason, self.queue_name, current_millis()]
        try:
            return bool(broker.scripts["DEAD_LETTER"](keys=keys, args=args))
        except redis.ResponseError as e:
            if not is_nogroup(e):
                raise
            return False

    def requeue(self, messages: Iterable[StreamMessageProxy]) -> None:
        """Put messages that were delivered but never started back on the stream."""
        entry_ids = [message.entry_id for message in messages]
        if not entry_ids:
            return
        try:
            self.broker.scripts["REQUEUE"](keys=[self.stream], args=[self.broker.group, self.name, *entry_ids])
        except redis.ResponseError as e:
            if not is_nogroup(e):
                raise
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None
        finally:
            self.release(entry_ids)

    def release(self, entry_ids: Iterable[str]) -> None:
        """Forget entries this consumer no longer holds, making room for more."""
        with self.lock:
            self.held.difference_update(entry_ids)
            if self.room() >= self.batch_size:  # waking the consumer for less would waste a fetch
                self.lock.notify()

    def close(self) -> None:
        """Put back the prefetched messages never returned, and leave the group if idle."""
        buffered, self.buffer = list(self.buffer), deque()
        self.requeue(buffered)
        try:
            self.prune_consumers(0, self.name)
        except redis.ResponseError as e:
            if not is_nogroup(e):
                raise
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None
