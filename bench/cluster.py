"""Drain rate on a local Valkey cluster (one queue, and four on different primaries) beside one server; then a failover.

    .venv/bin/python -m bench.cluster [--n 20000] [-p 2] [-t 8] [--jobs 2000] [--rate 50]

Trivial messages are drained by the stock `dramatiq` CLI through StreamsBroker, as in bench/broker.py:
on one valkey-server, on a 3 + 3 cluster with one queue, and on the cluster with the same messages
spread over four queues whose keys live on different primaries (what a cluster scales: queues and
vendors, not one hot queue). Writes on the cluster wait for one replica, as REDIS_WAIT_REPLICAS
does by default there. Then `--jobs` jobs stream through the whole service at `--rate` per second
while the primary holding the job queue is killed (devtools/failover.py), and the outage is printed.
With BENCH_CLUSTER set, this module is instead the app the workers load (`dramatiq bench.cluster`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import dramatiq
import redis

from bench.broker import drain_with_workers
from queueing.broker import StreamsBroker
from queueing.connection import connect_redis


def noop(n: int) -> None:
    """Do nothing: the benchmark measures the broker."""


if os.environ.get("BENCH_CLUSTER"):  # loaded by the dramatiq CLI as the worker app
    _cluster = os.environ["BENCH_CLUSTER"] == "cluster"
    dramatiq.set_broker(StreamsBroker(client=connect_redis(os.environ["REDIS_URL"], _cluster), wait_replicas=int(_cluster)))
    for _queue in os.environ["BENCH_QUEUES"].split(","):
        dramatiq.actor(noop, actor_name=f"noop_{_queue}", queue_name=_queue, max_retries=0)


def spread_queues(client: redis.RedisCluster, count: int) -> list[str]:
    """Name `count` queues whose keys live on as many different primaries as there are."""
    by_node: dict[str, str] = {}
    n = 0
    while len(by_node) < len(client.get_primaries()):
        by_node.setdefault(client.get_node_from_key(f"bench-{n}").name, f"bench-{n}")
        n += 1
    queues = list(by_node.values())
    return queues + [f"bench-{n + i}" for i in range(count - len(queues))]


def drain(url: str, cluster: bool, queues: list[str], n: int, processes: int, threads: int) -> float:
    """Enqueue n messages over the queues, drain them with `dramatiq`; return messages per second."""
    broker = StreamsBroker(client=connect_redis(url, cluster), wait_replicas=int(cluster))
    for queue in queues:
        broker.declare_queue(queue)
        broker.flush(queue)
    for start in range(0, n, 500):
        broker.enqueue_many([
            (dramatiq.Message(queue_name=queues[i % len(queues)], actor_name=f"noop_{queues[i % len(queues)]}", args=(i,),
                              kwargs={}, options={}), None)
            for i in range(start, min(start + 500, n))
        ])
    try:
        env = {"BENCH_CLUSTER": "cluster" if cluster else "server", "BENCH_QUEUES": ",".join(queues), "REDIS_URL": url}
        return drain_with_workers("bench.cluster", env, lambda: sum(broker.queue_size(queue) for queue in queues), n, processes, threads)
    finally:
        broker.client.close()


def main(argv: list[str] | None = None) -> None:
    """Run the drains, then the failover, and print what they measured."""
    from devtools import stores
    from devtools.cluster import LocalCluster
    from devtools.failover import run_failover

    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per drain")
    parser.add_argument("-p", "--processes", type=int, default=2)
    parser.add_argument("-t", "--threads", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2_000, help="jobs streamed through the service during the failover")
    parser.add_argument("--rate", type=float, default=50.0, help="jobs submitted per second during the failover")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        server, cluster = stores.valkey(folder / "server").start(), LocalCluster(folder / "cluster").start()
        try:
            with redis.RedisCluster.from_url(cluster.url) as client:
                four = spread_queues(client, 4)
            rates = {
                "one server, 1 queue": drain(server.url, False, ["bench"], args.n, args.processes, args.threads),
                "cluster, 1 queue": drain(cluster.url, True, ["bench"], args.n, args.processes, args.threads),
                "cluster, 4 queues on 3 primaries": drain(cluster.url, True, four, args.n, args.processes, args.threads),
            }
        finally:
            server.stop()
            cluster.stop()
        for name, rate in rates.items():
            print(f"{name:34} drain {rate:8,.0f} msg/s")
        mongodb = stores.secantus(folder / "mongodb").start()
        try:
            run = run_failover(folder / "failover", mongodb.url, args.jobs, args.rate, kill_after_jobs=args.jobs // 3)
        finally:
            mongodb.stop()
        print(f"failover, {args.jobs} jobs at {args.rate:g}/s: {run.summary()}")


if __name__ == "__main__":
    main()
