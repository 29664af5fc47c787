"""Saturate a rate-limited mock vendor through the whole service and report how much of its quota we used.

    .venv/bin/python -m bench.ratelimit [--rate 600] [--minutes 2] [-p 3] [-t 8]

Starts the API, the workers, a mock sync vendor limited to RATE requests a minute (it enforces
the limit itself, answering 429 beyond it) and, unless REDIS_URL / MONGODB_URI are set, embedded
data stores (give it scratch ones: it leaves jobs behind). It submits more jobs than the vendor
can take in the measured time, then counts what the vendor accepted from its first request on,
for `--minutes` minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from devtools import stores
from service.states import JobStatus
from service.store import connect, jobs_collection
from devtools.stack import Stack, free_ports, service_env, wait_until

REGISTRY = """
[vendors.bench]
mode = "sync"
url = "http://127.0.0.1:{port}/fetch"
rate_limit = "{rate}/minute"
"""
SUBMITTERS = 8
POLL_S = 0.05


@contextlib.contextmanager
def data_stores(folder: Path) -> Iterator[tuple[str, str]]:
    """Yield the Redis URL and MongoDB URI: from the environment, or of embedded servers."""
    with contextlib.ExitStack() as running:
        urls = []
        for variable, server_for in (("REDIS_URL", stores.valkey), ("MONGODB_URI", stores.secantus)):
            if os.environ.get(variable):
                urls.append(os.environ[variable])
                continue
            server = server_for(folder / variable.lower()).start()
            running.callback(server.stop)
            urls.append(server.url)
        yield urls[0], urls[1]


def submit_all(api_url: str, count: int) -> None:
    """Submit `count` jobs for the bench vendor from a few client threads."""
    with requests.Session() as session, ThreadPoolExecutor(SUBMITTERS) as pool:
        def submit(_: int) -> None:
            response = session.post(f"{api_url}/jobs", json={"name": "Bench"}, params={"vendor": "bench"}, timeout=10)
            response.raise_for_status()
        list(pool.map(submit, range(count)))


def stats(mock_url: str) -> dict[str, int]:
    return requests.get(f"{mock_url}/stats", timeout=5).json()


def run(rate: int, minutes: float, processes: int, threads: int) -> dict[str, float]:
    """Run the whole stack against the mock vendor and return the measured figures."""
    with tempfile.TemporaryDirectory() as folder_name, data_stores(Path(folder_name)) as (redis_url, mongodb_uri):
        folder = Path(folder_name)
        api_port, mock_port = free_ports(2)
        (folder / "vendors.toml").write_text(REGISTRY.format(port=mock_port, rate=rate))
        env = service_env(redis_url, mongodb_uri, folder / "vendors.toml", api_port)
        stack = Stack({**env, "LOG_LEVEL": "WARNING"}, folder)
        api_url, mock_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mock_port}"
        try:
            stack.start_mock("sync", mock_port, "--rate-limit", f"{rate}/minute", "--latency-ms", "20-80")
            stack.start_api(api_port)
            stack.start_worker(processes=processes, threads=threads)
            # Enough for the first window at once and every later one, with a window to spare.
            submitted = round(rate * (minutes + 1.5))
            with ThreadPoolExecutor(1) as feeder:
                feeding = feeder.submit(submit_all, api_url, submitted)
                first_served = wait_until(lambda: stats(mock_url)["served"] and time.monotonic(), 60, "the first request", POLL_S)
                time.sleep(max(0.0, first_served + minutes * 60 - time.monotonic()))
                measured = stats(mock_url)
                feeding.result()
            jobs = jobs_collection(connect(mongodb_uri))
            completed = jobs.count_documents({"status": JobStatus.COMPLETE.value})
        finally:
            stack.stop()
    return {
        "submitted": submitted, "served": measured["served"], "refused": measured["refused"],
        "max_in_window": measured["max_in_window"], "completed": completed,
        "quota_used_pct": 100 * measured["served"] / (rate * minutes),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the vendor's accepted requests per minute against its limit."""
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=600, help="the vendor's limit, requests per minute")
    parser.add_argument("--minutes", type=float, default=2.0, help="how long to measure")
    parser.add_argument("-p", "--processes", type=int, default=3, help="worker processes")
    parser.add_argument("-t", "--threads", type=int, default=8, help="threads per worker process")
    args = parser.parse_args(argv)
    figures = run(args.rate, args.minutes, args.processes, args.threads)
    print(f"vendor limit        {args.rate}/minute, measured {args.minutes:g} min from its first request")
    print(f"workers             {args.processes} processes x {args.threads} threads; {figures['submitted']} jobs submitted")
    print(f"accepted per minute {figures['served'] / args.minutes:.0f} = {figures['quota_used_pct']:.1f} % of the limit (target >= 95 %)")
    print(f"429 answers         {figures['refused']} (target 0); fullest window {figures['max_in_window']} of {args.rate}")
    print(f"jobs completed      {figures['completed']} (in the measured time)")


if __name__ == "__main__":
    main()
