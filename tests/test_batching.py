import os
import threading

import pytest

from devtools.stack import wait_until
from queueing.batching import Batch


def test_items_arriving_during_a_flush_share_the_next_one():
    release, batches = threading.Event(), []

    def flush(items):
        batches.append(list(items))
        release.wait(5)
        return [item * 2 for item in items]

    batch = Batch(flush)
    first = threading.Thread(target=batch, args=(0,))
    first.start()
    wait_until(lambda: batches, 5, "the first flush")
    results = {}
    waiting = [threading.Thread(target=lambda n=n: results.setdefault(n, batch(n))) for n in range(1, 6)]
    for thread in waiting:
        thread.start()
    wait_until(lambda: batch._waiting().qsize() == 5, 5, "five items waiting behind the first flush")
    release.set()
    for thread in [first, *waiting]:
        thread.join(5)
    assert results == {n: n * 2 for n in range(1, 6)}
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2


def test_an_error_result_is_raised_to_its_own_caller_only():
    batch = Batch(lambda items: [ValueError(item) if item == "bad" else item for item in items])
    assert batch("good") == "good"
    with pytest.raises(ValueError, match="bad"):
        batch("bad")


def test_an_error_of_the_flush_reaches_the_caller_and_the_next_batch_still_runs():
    calls = []

    def flush(items):
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("store down")
        return items

    batch = Batch(flush)
    with pytest.raises(ConnectionError):
        batch(1)
    assert batch(2) == 2


def test_a_forked_child_flushes_on_a_thread_of_its_own():
    batch = Batch(lambda items: [os.getpid() for _ in items])
    assert batch(None) == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, str(batch(None)).encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert int(os.read(read, 32)) == pid
