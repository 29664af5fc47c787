"""Deliver a queue's messages to one worker process as a member of the queue's consumer group."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import dramatiq
import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed

from queueing.keys import dead_key, delay_key, is_nogroup, stream_key
from queueing.outages import OUTAGE_ERRORS

if TYPE_CHECKING:
    from queueing.broker import StreamsBroker

logger = logging.getLogger(__name__)

#: How many due delayed messages one script call moves.
DELAY_BATCH_SIZE = 500
#: How often a consumer deletes dead consumers of its group, at most.
PRUNE_INTERVAL_MS = 60_000
#: The longest XREADGROUP BLOCK, kept well under redis-py's default 5 s socket timeout.
MAX_BLOCK_MS = 1_000
#: How often a consumer looks for due delayed messages that others added (retries, deferrals):
#: the lateness of a delayed message is at most this.
DELAY_CHECK_INTERVAL_MS = 100


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
        except OUTAGE_ERRORS as e:
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
            reply = self.read_group(count, max(block_ms, 1))  # BLOCK 0 would mean forever; the consumer thread needs its gaps
        except redis.ResponseError as e:
            self.recreate_group_if_missing(e)
            return
        for _stream, entries in reply or ():
            self.buffer_entries(entries)

    def read_group(self, count: int, block_ms: int) -> list:
        """Send XREADGROUP for new entries of the stream."""
        if isinstance(self.client, redis.RedisCluster):
            # Straight to the stream's primary: the cluster client's own xreadgroup first asks one
            # fixed node for the command's keys, and never recovers once that node is gone.
            node = self.client.get_node_from_key(self.stream)
            return self.client.execute_command(
                "XREADGROUP", "GROUP", self.broker.group, self.name, "COUNT", count, "BLOCK", block_ms, "STREAMS", self.stream, ">",
                target_nodes=node,
            )
        return self.client.xreadgroup(self.broker.group, self.name, {self.stream: ">"}, count=count, block=block_ms)

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
            moved, next_eta = self.broker.run_script("MOVE_DUE", keys, [now_ms, DELAY_BATCH_SIZE])
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
        lost = self.broker.run_script("REFRESH", [self.stream], [self.broker.group, self.name, *entry_ids])
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
        cursor, live, dead = broker.run_script("RECOVER", keys, args)
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
        return self.broker.run_script("PRUNE_CONSUMERS", [self.stream], [self.broker.group, min_idle_ms, name])

    def ack(self, message: StreamMessageProxy) -> None:
        """Acknowledge and delete a processed message's entry."""
        try:
            self.broker.acks[self.queue_name](message.entry_id)
        except OUTAGE_ERRORS as e:
            raise ConnectionClosed(e) from None
        except redis.ResponseError as e:
            if not is_nogroup(e):  # The stream was flushed: nothing left to acknowledge.
                raise
        finally:
            self.release([message.entry_id])

    def nack(self, message: StreamMessageProxy) -> None:
        """Move a failed message to the dead-letter stream with the reason it failed."""
        reason = failure_reason(message)
        try:
            settled = self.dead_letter(message.entry_id, message._message.encode(), reason)
        except OUTAGE_ERRORS as e:
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
            return bool(broker.run_script("DEAD_LETTER", keys, args))
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
            self.broker.run_script("REQUEUE", [self.stream], [self.broker.group, self.name, *entry_ids])
        except OUTAGE_ERRORS as e:
            raise ConnectionClosed(e) from None
        except redis.ResponseError as e:
            if not is_nogroup(e):
                raise
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
        except OUTAGE_ERRORS as e:
            raise ConnectionClosed(e) from None
        except redis.ResponseError as e:
            if not is_nogroup(e):
                raise

