"""Group commit: requests that reach a data store at the same time share one round trip.

An embedded or busy store spends most of each command on the command itself, not on the
documents it carries: one `insert_many` of 20 jobs costs about what 4 `insert_one` calls do. A
`Batch` runs its flush function on a thread of its own for every item that arrived while the
previous flush ran, so under load batches grow by themselves and when idle an item waits for
nothing but the hand-over to that thread.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: A bound on one command's size; the rest of a crowd waits for the next flush.
MAX_BATCH_ITEMS = 100


class _Waiter:
    __slots__ = ("item", "result", "done")

    def __init__(self, item) -> None:
        self.item = item
        self.result = None
        # Held until the flush thread releases it: a far cheaper one-shot signal than an Event.
        self.done = threading.Lock()
        self.done.acquire()


class Batch(Generic[Item, Result]):
    """Call `flush(items)` for the items waiting and give each caller its own result (or raise its error).

    `flush` returns one result per item, in order; a result that is an exception is raised to
    that item's caller only, and an exception raised by `flush` itself reaches every caller.
    """

    def __init__(self, flush: Callable[[list[Item]], list[Result | Exception]]) -> None:
        self.flush = flush
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Waiter] | None = None
        self._pid: int | None = None

    def __call__(self, item: Item) -> Result:
        waiter = _Waiter(item)
        self._waiting().put(waiter)
        waiter.done.acquire()
        if isinstance(waiter.result, BaseException):
            raise waiter.result
        return waiter.result

    def _waiting(self) -> queue.SimpleQueue[_Waiter]:
        """Return the queue its flushing thread reads, starting the thread in this process if needed.

        Started on first use, not at construction: a process that forks (gunicorn, dramatiq) gives
        its children no threads, so each child starts its own.
        """
        with self._lock:
            if self._pid != os.getpid():
                self._queue, self._pid = queue.SimpleQueue(), os.getpid()
                threading.Thread(target=self._flush_forever, args=(self._queue,), name="batch-flush", daemon=True).start()
            return self._queue

    def _flush_forever(self, waiting: queue.SimpleQueue[_Waiter]) -> None:
        while True:
            batch = [waiting.get()]
            while len(batch) < MAX_BATCH_ITEMS:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.flush([waiter.item for waiter in batch])
            except BaseException as error:  # the store is down, say: every caller of this batch sees it, none hangs
                results = [error] * len(batch)
            for waiter, result in zip(batch, results):
                waiter.result = result
                waiter.done.release()
