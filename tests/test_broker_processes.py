"""Real `dramatiq` worker processes on StreamsBroker: kill -9 and SIGTERM lose no message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest

from queueing.broker import StreamsBroker
from queueing.keys import dead_key

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "broker-app"  # tests/broker_app.py; not imported here, it builds its broker at import
PROCESSED_KEY = "broker-app:processed"
MESSAGES = 300
THREADS = 4
DEADLINE_S = 30.0


@pytest.fixture
def start_worker(redis_url, tmp_path) -> Iterator[Callable[[int], subprocess.Popen]]:
    """Start `dramatiq tests.broker_app` process groups; kill whatever is left after the test."""
    processes: list[subprocess.Popen] = []

    def start(visibility_ms: int) -> subprocess.Popen:
        env = {
            **os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
            "BROKER_APP_VISIBILITY_MS": str(visibility_ms), "BROKER_APP_SLEEP_S": "0.02",
            "dramatiq_worker_timeout": "200",
        }
        argv = [sys.executable, "-m", "dramatiq", "tests.broker_app", "-p", "1", "-t", str(THREADS)]
        with open(tmp_path / f"worker-{len(processes)}.log", "wb") as log:
            # A session of its own, so that kill -9 can reach the whole process group.
            process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


@pytest.fixture
def broker(redis_client) -> StreamsBroker:
    broker = StreamsBroker(client=redis_client)
    broker.declare_queue(QUEUE)
    return broker


def enqueue_all(broker: StreamsBroker) -> None:
    for n in range(MESSAGES):
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="record", args=(n,), kwargs={}, options={}))


def wait_for_processed(redis_client, count: int) -> None:
    """Poll until at least count distinct messages were processed; fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while redis_client.scard(PROCESSED_KEY) < count:
        if time.monotonic() > deadline:
            reasons = [fields[b"reason"] for _, fields in redis_client.xrange(dead_key(QUEUE))]
            pytest.fail(f"only {redis_client.scard(PROCESSED_KEY)}/{count} processed in time; dead letters: {reasons}")
        time.sleep(0.01)


def total_runs(redis_client) -> int:
    return sum(int(value or 0) for value in redis_client.mget([f"broker-app:runs:{n}" for n in range(MESSAGES)]))


def test_every_message_is_processed_after_a_worker_is_killed_while_holding_messages(broker, redis_client, start_worker):
    enqueue_all(broker)
    first = start_worker(1_000)
    wait_for_processed(redis_client, MESSAGES // 3)

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    held_at_kill = redis_client.xpending(QUEUE, broker.group)["pending"]
    start_worker(1_000)
    wait_for_processed(redis_client, MESSAGES)
    broker.join(QUEUE, timeout=int(DEADLINE_S * 1000))

    duplicates = total_runs(redis_client) - MESSAGES
    print(f"held by the killed worker: {held_at_kill}, duplicate runs: {duplicates}")
    assert held_at_kill > 0, "the worker was killed while holding nothing: the test proved nothing"
    assert redis_client.scard(PROCESSED_KEY) == MESSAGES
    # Only a message recorded but not yet acked when the worker died can run twice.
    assert duplicates <= THREADS


def test_sigterm_finishes_started_messages_and_puts_back_the_rest_at_once(broker, redis_client, start_worker):
    enqueue_all(broker)
    first = start_worker(60_000)
    wait_for_processed(redis_client, MESSAGES // 3)

    first.send_signal(signal.SIGTERM)  # the master only: it forwards one SIGTERM to its workers
    assert first.wait(timeout=DEADLINE_S) == 0
    assert redis_client.xpending(QUEUE, broker.group)["pending"] == 0, "messages left waiting for a visibility timeout"
    assert redis_client.scard(PROCESSED_KEY) + redis_client.xlen(QUEUE) == MESSAGES

    start_worker(60_000)
    wait_for_processed(redis_client, MESSAGES)
    broker.join(QUEUE, timeout=int(DEADLINE_S * 1000))

    assert total_runs(redis_client) == MESSAGES
