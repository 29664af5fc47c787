"""Drain a burst of jobs for an unlimited sync vendor, as the Procfile runs the service.

    python -m bench.burst                 # 4,000 jobs, each way below
    python -m bench.burst --jobs 1000

Two ways, each on a fresh stack started as bench/load.py starts it (the Procfile's process counts,
the worker's default WORKER_NICE and LOG_LEVEL=INFO, vendors that never push back):

- live: the workers run while the burst arrives;
- backlog: the workers are paused (SIGSTOP) while it arrives and resumed once it is all in, as after
  a deploy or an outage.

Prints how fast the API took the burst in, how fast the workers drained it (jobs from the first
submission, or from the resume, to the last result), that every job completed with its own
result, the Redis time per job (`INFO commandstats`, reset before the burst) and its busiest
commands, each part's busy CPU per job (read from /proc), and the machine's speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymongo
import redis
import requests

from bench import machine
from bench.load import add_worker_nice, busy_cpu_s, start_stack
from devtools.stack import wait_until

SUBMITTERS = 32
DRAIN_TIMEOUT_S = 600


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--worker-processes", type=int, default=2, help="as the Procfile's WORKER_PROCESSES")
    parser.add_argument("--worker-threads", type=int, default=8, help="as the Procfile's WORKER_THREADS")
    parser.add_argument("--log-level", default="INFO", help="every process's LOG_LEVEL, INFO as the Procfile's default")
    add_worker_nice(parser)
    args = parser.parse_args()
    # What bench.load's start_stack reads, at the Procfile's settings and vendors that never push back.
    args.rate_limit, args.burst, args.web_workers = "1000000/minute", None, 3
    return args


def submit_burst(url: str, jobs: int) -> tuple[list[str], float]:
    """Submit `jobs` jobs for the sync vendor from many client threads; return their ids in order and the seconds it took."""
    local = threading.local()

    def submit(n: int) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(f"{url}/jobs", params={"vendor": "sync"}, json={"name": f"burst-{n}"}, timeout=30)
        response.raise_for_status()
        return response.json()["request_id"]

    started = time.monotonic()
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        request_ids = list(pool.map(submit, range(jobs)))
    return request_ids, time.monotonic() - started


def signal_group(pid: int, signum: int) -> None:
    """Signal a stack process's whole group: dramatiq's parent and the worker processes it forked."""
    os.killpg(pid, signum)


def completed(jobs: pymongo.collection.Collection) -> int:
    return jobs.count_documents({"status": "complete"})


def vendor_served(stack) -> Callable[[], int]:
    """Return a reader of the calls the sync mock vendor served: a count that costs the store nothing."""
    argv = next(process for process in stack.processes if process.name == "vendor-sync").process.args
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/stats"
    return lambda: requests.get(url, timeout=5).json()["served"]


def check_results(jobs: pymongo.collection.Collection, request_ids: list[str]) -> int:
    """Return how many jobs lack their own result: the vendor echoes each job's name, unique in the burst."""
    found = {job["_id"]: job.get("result") or {} for job in jobs.find({"_id": {"$in": request_ids}}, {"result": True})}
    return sum(1 for n, request_id in enumerate(request_ids) if found.get(request_id, {}).get("name") != f"burst-{n}")


def redis_time(client: redis.Redis) -> tuple[int, list[tuple[str, int, int]]]:
    """Return the µs Redis spent in commands since the reset, and the busiest commands (name, calls, µs)."""
    stats = client.info("commandstats")
    rows = sorted(((name.removeprefix("cmdstat_"), row["calls"], row["usec"]) for name, row in stats.items()), key=lambda r: -r[2])
    return sum(row[2] for row in rows), rows[:5]


def mongodb_operations(jobs: pymongo.collection.Collection) -> dict[str, int]:
    """Return the store's count of operations by kind since it started (`serverStatus` opcounters)."""
    return jobs.database.client.admin.command("serverStatus")["opcounters"]


def run(args: argparse.Namespace, paused: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="vendorfetch-burst-"))
    stack, servers, url = start_stack(folder, args)
    worker = next(process for process in stack.processes if process.name == "worker")
    client = redis.Redis.from_url(servers[0].url)
    jobs = pymongo.MongoClient(servers[1].url).get_default_database()["jobs"]
    served = vendor_served(stack)
    try:
        client.config_resetstat()
        operations_before = mongodb_operations(jobs)
        cpu_before = busy_cpu_s(stack, servers)
        if paused:
            signal_group(worker.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        request_ids, intake_s = submit_burst(url, args.jobs)
        if paused:
            started = time.monotonic()
            signal_group(worker.process.pid, signal.SIGCONT)
        # Counting completed jobs costs the store a scan, so it is polled only once the vendor served them all.
        wait_until(lambda: served() >= args.jobs, DRAIN_TIMEOUT_S, f"{args.jobs} vendor calls", 0.05)
        wait_until(lambda: completed(jobs) >= args.jobs, DRAIN_TIMEOUT_S, f"{args.jobs} completed jobs", 0.05)
        drain_s = time.monotonic() - started
        cpu = {part: used - cpu_before.get(part, 0.0) for part, used in busy_cpu_s(stack, servers).items()}
        redis_us, busiest = redis_time(client)
        operations = {kind: count - operations_before[kind] for kind, count in mongodb_operations(jobs).items()}
        wrong = check_results(jobs, request_ids)
    finally:
        if paused:
            signal_group(worker.process.pid, signal.SIGCONT)
        stack.stop()
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    how = "backlog (workers paused while it arrived)" if paused else "live (workers running while it arrived)"
    print(f"{how}: API took {args.jobs} jobs in {intake_s:.1f} s ({args.jobs / intake_s:.0f} jobs/s); "
          f"drained at {args.jobs / drain_s:.0f} jobs/s ({drain_s:.1f} s); jobs without their own result: {wrong}")
    print(f"  Redis: {redis_us / args.jobs:.0f} µs per job; busiest: "
          + ", ".join(f"{name} {calls / args.jobs:.1f}/job at {usec / max(calls, 1):.0f} µs" for name, calls, usec in busiest))
    print(f"  MongoDB: {sum(operations.values()) / args.jobs:.2f} operations per job; "
          + ", ".join(f"{kind} {count / args.jobs:.2f}" for kind, count in operations.items() if count))
    print("  busy CPU per job, µs: " + ", ".join(f"{part} {1e6 * used / args.jobs:,.0f}" for part, used in sorted(cpu.items(), key=lambda item: -item[1])))


def main() -> None:
    args = parse_args()
    print(machine.describe())
    print(f"{args.jobs} jobs for an unlimited sync vendor; worker -p {args.worker_processes} -t {args.worker_threads}, "
          f"LOG_LEVEL {args.log_level}")
    for paused in (False, True):
        run(args, paused)
    print(machine.describe())


if __name__ == "__main__":
    main()
