"""Load-test the full stack as the Procfile runs it: 70 % POST /jobs, 30 % GET /jobs/{id}, closed loop.

    python -m bench.load                       # wrk, 200 connections, 60 s, vendors at 600/minute
    python -m bench.load --rate-limit none     # vendors unlimited: the workers at full speed
    python -m bench.load --connections 100
    python -m bench.load --burst 10            # the vendors' calls paced: 10 at once, then evenly
    python -m bench.load --worker-nice 0       # the worker at the API's CPU priority
    python -m bench.load --tool locust         # the same mix from locust (which needs CPU of its own)

Starts fresh embedded Redis and MongoDB-wire servers, both mock vendors, the release step, the
API (gunicorn), the worker and callbacks processes and the clock, all on 127.0.0.1, with the
Procfile's settings (process counts, the worker's default WORKER_NICE, LOG_LEVEL=INFO) unless
told otherwise. Then prints requests/s, latency percentiles, failures, the jobs completed end to
end while the load ran (and per second) and how long they took, and the busy CPU per request of
each part (read from /proc). Last, the same load against bench/baseline_app.py (one insert per
POST, one read per GET, the same gunicorn settings, stores of its own): the limit the store sets,
in the same run, and the service's ratio to it. The machine's speed moves from hour to hour:
compare within a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo
import requests

from bench import machine
from devtools import stores
from devtools.stack import Stack, free_ports, service_env, vendors_toml
from service.config import MAX_NICE, Config

ROOT = Path(__file__).resolve().parent.parent
MIX_BODY = {"name": "TestUser", "email": "test@mail.com", "password": "pass"}
# The load offers far more jobs than the vendors' limits take. With the default max_wait_s (an
# hour: 72,000 jobs for both vendors at 600/minute) a fast run fills the backlog before it ends
# and the API rightly answers 503 "Backlog full"; a day (1,728,000 jobs) keeps even a 3-minute
# run at 3,000 requests/s about the API.
BACKLOG = "max_wait_s = 86400"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PARTS = {"valkey-server": "valkey", "secantusd-py": "mongodb", "vendor-sync": "mock vendors", "vendor-async": "mock vendors"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", choices=("wrk", "locust"), default="wrk")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--duration", type=int, default=60, help="seconds")
    parser.add_argument("--web-workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--worker-processes", type=int, default=2, help="as the Procfile's WORKER_PROCESSES")
    parser.add_argument("--worker-threads", type=int, default=8, help="as the Procfile's WORKER_THREADS")
    add_worker_nice(parser)
    parser.add_argument("--log-level", default="INFO", help="every process's LOG_LEVEL, INFO as the Procfile's default")
    parser.add_argument("--rate-limit", default="600/minute", type=vendor_limit,
                        help="each mock vendor's limit, or none for vendors that never push back")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline app's run")
    parser.add_argument("--burst", type=int, help="each mock vendor's burst (default: its whole limit)")
    return parser.parse_args()


def add_worker_nice(parser: argparse.ArgumentParser) -> None:
    """Add --worker-nice: the worker processes' WORKER_NICE, the service's default unless told."""
    parser.add_argument("--worker-nice", type=int, default=Config.worker_nice, choices=range(MAX_NICE + 1), metavar=f"0-{MAX_NICE}",
                        help=f"the worker's WORKER_NICE ({Config.worker_nice}, the default: the API comes first; 0: equal)")


def vendor_limit(text: str) -> str:
    """Read --rate-limit: N/second|minute|hour, or none (a limit no load here reaches)."""
    return "1000000/minute" if text == "none" else text


def start_stack(folder: Path, args: argparse.Namespace) -> tuple[Stack, list, str]:
    """Start the data stores and every process of the service; return them and the API's URL."""
    servers = [stores.valkey(folder / "valkey").start(), stores.secantus(folder / "mongodb").start()]
    api_port, sync_port, async_port = free_ports(3)
    registry = folder / "vendors.toml"
    limit = f'rate_limit = "{args.rate_limit}"\n{BACKLOG}' + (f"\nburst = {args.burst}" if args.burst else "")
    registry.write_text(vendors_toml(sync_port, async_port).replace('rate_limit = "6000/minute"', limit))
    stack = Stack({
        **service_env(servers[0].url, servers[1].url, registry, api_port),
        "WEB_CONCURRENCY": str(args.web_workers), "LOG_LEVEL": args.log_level, "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        "WORKER_NICE": str(args.worker_nice),
    }, folder)
    (folder / "metrics").mkdir()
    rate = ["--rate-limit", args.rate_limit]
    stack.start_mock("sync", sync_port, *rate)
    stack.start_mock("async", async_port, *rate, "--callback-delay-s", "1")
    argv = [str(Path(sys.executable).parent / "gunicorn"), "--config", "service/gunicorn_conf.py", "service.app:create_app()"]
    stack.env["PORT"] = str(api_port)
    stack.migrate()
    stack.start("api", argv, f"http://127.0.0.1:{api_port}/healthz")
    stack.start_worker(processes=args.worker_processes, threads=args.worker_threads, queues=("job-queue",))
    stack.start_worker("callbacks", processes=1, threads=8, queues=("client-callbacks",))
    stack.start("clock", [sys.executable, "-m", "scheduler.clock"])
    return stack, servers, f"http://127.0.0.1:{api_port}"


def warm_up(url: str) -> None:
    """Touch every gunicorn worker and the store once, so the run does not measure start-up."""
    with requests.Session() as session:
        for _ in range(100):
            request_id = session.post(f"{url}/jobs", json=MIX_BODY, timeout=10).json()["request_id"]
            session.get(f"{url}/jobs/{request_id}", timeout=10)


def run_wrk(url: str, args: argparse.Namespace) -> dict:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: `apt-get install -y wrk` (make bench-load does this)")
    argv = ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.duration}s", "--timeout", "2s",
            "-s", str(ROOT / "bench" / "wrk_jobs.lua"), url]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    stats = json.loads(output.strip().splitlines()[-1])
    failures = stats["connect_errors"] + stats["read_errors"] + stats["write_errors"] + stats["non_2xx"] + stats["over_timeout"]
    return {
        "requests_per_s": stats["requests"] / stats["duration_s"], "p50_ms": stats["p50_ms"], "p95_ms": stats["p95_ms"],
        "p99_ms": stats["p99_ms"], "max_ms": stats["max_ms"], "requests": stats["requests"], "failures": failures,
        "over_2s": stats["over_timeout"],
    }


def run_locust(url: str, args: argparse.Namespace, folder: Path) -> dict:
    prefix = folder / "locust"
    argv = [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
            "-u", str(args.connections), "-r", str(args.connections), "-t", f"{args.duration}s", "--host", url,
            "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    subprocess.run(argv, capture_output=True, text=True, check=False)
    with open(f"{prefix}_stats.csv") as stats_file:
        total = next(row for row in csv.DictReader(stats_file) if row["Name"] == "Aggregated")
    return {
        "requests_per_s": float(total["Requests/s"]), "p50_ms": float(total["50%"]), "p95_ms": float(total["95%"]),
        "p99_ms": float(total["99%"]), "max_ms": float(total["Max Response Time"]),
        "requests": int(total["Request Count"]), "failures": int(total["Failure Count"]),
        "over_2s": None,  # locust reports percentiles, not a count over a threshold
    }


def busy_cpu_s(stack: Stack, servers: list) -> dict[str, float]:
    """Return the CPU seconds each part of the stack has used so far, its reaped children's included (Linux).

    A stack process runs in a session of its own, so the workers gunicorn and dramatiq fork share
    its process group; a data store is matched by its pid (with what its finished forks used).
    """
    parts = {server.process.pid: server.name for server in servers}
    groups = {process.process.pid: process.name for process in stack.processes}
    used: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_fields(stat)
        except OSError:  # it exited meanwhile
            continue
        name = parts.get(int(stat.parent.name)) or groups.get(int(fields[2]))  # its pid, or its process group
        if name:
            part = PARTS.get(name, name)
            used[part] = used.get(part, 0.0) + cpu_s(fields)
    return used


def stat_fields(stat: Path) -> list[str]:
    """Return the fields of a /proc/PID/stat file after the command name."""
    return stat.read_text().rpartition(")")[2].split()


def cpu_s(fields: list[str]) -> float:
    """Return the CPU seconds a process's stat fields count: its own and its reaped children's (utime .. cstime)."""
    return sum(int(ticks) for ticks in fields[11:15]) / CLOCK_TICKS


def generator_cpu_s() -> float:
    """Return the CPU seconds of this process's finished children: the load generator, once it has run."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def job_outcomes(mongodb_uri: str) -> tuple[dict[str, int], list[float]]:
    """Count the jobs by status, and return the seconds each completed job took from submission to result, sorted."""
    with pymongo.MongoClient(mongodb_uri) as client:
        jobs = client.get_default_database()["jobs"]
        counts = {row["_id"]: row["n"] for row in jobs.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])}
        completed = jobs.find({"status": "complete"}, {"created_at": True, "finished_at": True})
        return counts, sorted((job["finished_at"] - job["created_at"]).total_seconds() for job in completed)


def nearest_rank(ordered: list[float], fraction: float) -> float:
    """Return the value at the given fraction of a sorted list (nearest-rank percentile)."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def completed_count(mongodb_uri: str) -> int:
    with pymongo.MongoClient(mongodb_uri) as client:
        return client.get_default_database()["jobs"].count_documents({"status": "complete"})


def measure_baseline(args: argparse.Namespace) -> dict:
    """Run the same load against bench/baseline_app.py on stores of its own, with the service's gunicorn settings."""
    folder = Path(tempfile.mkdtemp(prefix="vendorfetch-baseline-"))
    servers = [stores.secantus(folder / "mongodb").start()]
    api_port, = free_ports(1)
    stack = Stack({"MONGODB_URI": servers[0].url, "PORT": str(api_port), "WEB_CONCURRENCY": str(args.web_workers)}, folder)
    try:
        argv = [str(Path(sys.executable).parent / "gunicorn"), "--config", "service/gunicorn_conf.py", "bench.baseline_app:create_app()"]
        stack.start("baseline", argv, f"http://127.0.0.1:{api_port}/healthz")
        url = f"http://127.0.0.1:{api_port}"
        warm_up(url)
        return run_wrk(url, args)
    finally:
        stack.stop()
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    args = parse_args()
    print(machine.describe())
    folder = Path(tempfile.mkdtemp(prefix="vendorfetch-load-"))
    stack, servers, url = start_stack(folder, args)
    try:
        warm_up(url)
        completed_before = completed_count(servers[1].url)
        started, cpu_before, generator_before = time.monotonic(), busy_cpu_s(stack, servers), generator_cpu_s()
        result = run_wrk(url, args) if args.tool == "wrk" else run_locust(url, args, folder)
        elapsed = time.monotonic() - started
        cpu = {part: used - cpu_before.get(part, 0.0) for part, used in busy_cpu_s(stack, servers).items()}
        cpu[args.tool] = generator_cpu_s() - generator_before
        completed_during = completed_count(servers[1].url) - completed_before
        counts, took_s = job_outcomes(servers[1].url)
    finally:
        stack.stop()
        for server in servers:
            server.stop()
    print(f"tool: {args.tool}; "
          f"{args.connections} connections for {args.duration} s; gunicorn gevent x{args.web_workers}; "
          f"worker -p {args.worker_processes} -t {args.worker_threads} nice {args.worker_nice}; LOG_LEVEL {args.log_level}; "
          f"vendors {args.rate_limit} each, burst {args.burst or 'the whole limit'}")
    print(f"requests/s: {result['requests_per_s']:.0f}  requests: {result['requests']}  failures: {result['failures']}  "
          f"over 2 s: {result['over_2s']}")
    print(f"latency ms: p50 {result['p50_ms']:.1f}  p95 {result['p95_ms']:.1f}  p99 {result['p99_ms']:.1f}  max {result['max_ms']:.1f}")
    print(f"jobs completed during the load: {completed_during} ({completed_during / elapsed:.0f}/s); "
          f"by status after {elapsed:.0f} s: {json.dumps(counts, sort_keys=True)}")
    if took_s:
        print(f"completed jobs, submission to result, s: p50 {nearest_rank(took_s, 0.50):.1f}  "
              f"p99 {nearest_rank(took_s, 0.99):.1f}  max {took_s[-1]:.1f}")
    per_request = {part: 1e6 * used / max(result["requests"], 1) for part, used in cpu.items()}
    by_cost = sorted(per_request.items(), key=lambda item: -item[1])
    print("busy CPU per request, µs: " + ", ".join(f"{part} {us:,.0f}" for part, us in by_cost)
          + f"; {sum(per_request.values()):,.0f} in all ({sum(cpu.values()) / elapsed:.2f} cores busy)")
    shutil.rmtree(folder, ignore_errors=True)
    if args.baseline and args.tool == "wrk":
        baseline = measure_baseline(args)
        print(f"baseline (bench/baseline_app.py: one insert per POST, one read per GET, same gunicorn settings): "
              f"requests/s {baseline['requests_per_s']:.0f}  p99 {baseline['p99_ms']:.1f} ms  failures {baseline['failures']}; "
              f"service / baseline: requests/s x{result['requests_per_s'] / baseline['requests_per_s']:.2f}, "
              f"p99 x{result['p99_ms'] / baseline['p99_ms']:.2f}")
    print(machine.describe())


if __name__ == "__main__":
    main()
