"""Drain N trivial messages with the stock `dramatiq` CLI through StreamsBroker and RedisBroker.

    .venv/bin/python -m bench.broker [--n 20000] [-p 1] [-t 8]

Both brokers run on the same Redis (REDIS_URL, or an embedded valkey-server started for the run)
with the same processes and threads.  The rate is measured from the first message consumed to the
last one acknowledged, so interpreter start-up does not count.  With BENCH_BROKER set, this module
is instead the app the workers load (`dramatiq bench.broker`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from queueing.broker import StreamsBroker

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"
POLL_S = 0.02
DRAIN_TIMEOUT_S = 600.0


def build_broker(kind: str, url: str) -> dramatiq.Broker:
    """Return the broker under test: "streams" or dramatiq's own "redis"."""
    return StreamsBroker(url=url) if kind == "streams" else RedisBroker(url=url)


if os.environ.get("BENCH_BROKER"):  # loaded by the dramatiq CLI as the worker app
    dramatiq.set_broker(build_broker(os.environ["BENCH_BROKER"], os.environ["REDIS_URL"]))

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def noop(n: int) -> None:
        """Do nothing: the benchmark measures the broker."""


def queue_size(broker: dramatiq.Broker) -> Callable[[], int]:
    """Return a function counting the queue's messages not yet acknowledged."""
    if isinstance(broker, StreamsBroker):
        return lambda: broker.queue_size(QUEUE)
    return lambda: broker.do_qsize(QUEUE)


def enqueue(broker: dramatiq.Broker, n: int) -> float:
    """Enqueue n messages; return messages per second."""
    started = time.perf_counter()
    for i in range(n):
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="noop", args=(i,), kwargs={}, options={}))
    return n / (time.perf_counter() - started)


def drain(kind: str, url: str, n: int, processes: int, threads: int) -> tuple[float, float]:
    """Enqueue n messages, drain them with `dramatiq`; return (enqueue rate, drain rate) in msg/s."""
    broker = build_broker(kind, url)
    broker.declare_queue(QUEUE)
    broker.flush(QUEUE)
    enqueue_rate = enqueue(broker, n)
    try:
        env = {"BENCH_BROKER": kind, "REDIS_URL": url}
        return enqueue_rate, drain_with_workers("bench.broker", env, queue_size(broker), n, processes, threads)
    finally:
        broker.flush(QUEUE)
        broker.close()


def drain_with_workers(app: str, env: dict[str, str], size: Callable[[], int], n: int, processes: int, threads: int) -> float:
    """Start `dramatiq app` with env added; return how many of the n queued messages (counted by size) it drained per second."""
    argv = [sys.executable, "-m", "dramatiq", app, "-p", str(processes), "-t", str(threads)]
    worker = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while size() >= n:
            time.sleep(POLL_S / 10)
        started = time.perf_counter()
        while size() > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app}: queues not drained in {DRAIN_TIMEOUT_S} s")
            time.sleep(POLL_S)
        return n / (time.perf_counter() - started)
    finally:
        worker.send_signal(signal.SIGTERM)  # the master only; it stops its workers
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """Yield REDIS_URL, or the URL of an embedded valkey-server started for the run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    from devtools import stores

    with tempfile.TemporaryDirectory() as data_dir:
        server = stores.valkey(Path(data_dir)).start()
        try:
            yield server.url
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print messages per second for both brokers."""
    parser = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per broker")
    parser.add_argument("-p", "--processes", type=int, default=1)
    parser.add_argument("-t", "--threads", type=int, default=8)
    args = parser.parse_args(argv)
    with redis_url() as url:
        rates = {kind: drain(kind, url, args.n, args.processes, args.threads) for kind in ("streams", "redis")}
    for kind, (enqueue_rate, drain_rate) in rates.items():
        print(f"{kind:8} enqueue {enqueue_rate:8,.0f} msg/s   drain {drain_rate:8,.0f} msg/s")
    print(f"streams / redis drain ratio: {rates['streams'][1] / rates['redis'][1]:.2f}")


if __name__ == "__main__":
    main()
