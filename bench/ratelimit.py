"""Saturate rate-limited mock vendors through the whole service: quota used, 429s, fullest windows, Redis time per job.

    .venv/bin/python -m bench.ratelimit [--only NAME ...]

Starts the API, two worker processes of eight threads, one mock sync vendor per scenario (it
enforces its limits itself, answering 429 beyond them, and reports its fullest window of each
limit and the most calls it had in progress) and, unless REDIS_URL / MONGODB_URI are set,
embedded data stores (give it scratch ones: it leaves jobs behind). The scenarios run one after
another. Each submits a little more than its vendor can take in the measured time, counts what
the vendor accepted from its first request on, then waits for every job to complete. Redis's
command statistics are reset at its start (CONFIG RESETSTAT): the Redis time per job is the
time of the commands clients sent (a script's inner commands are counted in its EVALSHA) over
the run, divided by the jobs completed. At the end, with the service stopped, the limiter alone
replays jobs (one ADMIT and one ACQUIRE with the circuit breaker's check each, as the service does)
at each scenario's limits: its share per job.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis
import requests
from pymongo.collection import Collection

from devtools import stores
from devtools.stack import Stack, free_ports, service_env, wait_until
from queueing.breaker import CircuitBreaker
from queueing.ratelimit import NewJob, RateLimiter
from service.config import Config
from service.states import JobStatus
from service.store import connect, jobs_collection
from vendors.registry import Vendor

SUBMITTERS = 8
POLL_S = 0.05
PROCESSES, THREADS = 2, 8
REPLAY_S = 5
# Commands only the service's scripts send: INFO commandstats counts them both on their own and
# within the script's EVALSHA, so they are left out of the sum.
INSIDE_SCRIPTS = {"lindex", "lrem", "lset", "rpush", "lrange", "pexpire", "hincrby", "zscore", "zcount", "zrange",
                  "zrangebyscore", "zremrangebyscore", "xack", "xautoclaim", "xclaim"}


@dataclass(frozen=True)
class Scenario:
    name: str
    rate_limit: str
    seconds: float  # how long the vendor's use of its quota is measured
    max_in_flight: int | None = None
    latency_ms: str = "20-80"
    jobs: int | None = None  # default: what the limits allow in the measured time, and a little more

    def allowed(self, seconds: float | None = None) -> int:
        """The calls the vendor's tightest limit allows in `seconds` (default: the measured time) at its rate."""
        limits = Vendor("x", "sync", "", self.rate_limit).limits
        return math.floor(min(count * (seconds or self.seconds) / period for count, period in limits))

    def toml(self, port: int) -> str:
        extra = f"max_in_flight = {self.max_in_flight}\n" if self.max_in_flight else ""
        return f'[vendors.{self.name}]\nmode = "sync"\nurl = "http://127.0.0.1:{port}/fetch"\nrate_limit = "{self.rate_limit}"\n{extra}'


SCENARIOS = [
    Scenario("persecond", "5/second", 30),
    Scenario("perminute", "600/minute", 90),
    Scenario("twolimits", "20/second, 300/minute", 90),
    Scenario("inflight", "1000/second", 10, max_in_flight=3, latency_ms="1000", jobs=30),
    Scenario("million", "1000000/minute", 5, jobs=3000),
]


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


def submit_all(api_url: str, vendor: str, count: int) -> None:
    """Submit `count` jobs for one vendor from a few client threads."""
    with requests.Session() as session, ThreadPoolExecutor(SUBMITTERS) as pool:
        def submit(_: int) -> None:
            response = session.post(f"{api_url}/jobs", json={"name": "Bench"}, params={"vendor": vendor}, timeout=10)
            response.raise_for_status()
        list(pool.map(submit, range(count)))


def stats(mock_url: str) -> dict:
    return requests.get(f"{mock_url}/stats", timeout=5).json()


def redis_time_us(client: redis.Redis) -> tuple[float, float]:
    """Return the µs of the commands clients sent since the last reset, and of those the EVALSHA ones."""
    commands = {name.removeprefix("cmdstat_"): row for name, row in client.info("commandstats").items()}
    sent = sum(row["usec"] for name, row in commands.items() if name not in INSIDE_SCRIPTS)
    return sent, commands.get("evalsha", {}).get("usec", 0)


def redis_cpu_s(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return cpu["used_cpu_sys"] + cpu["used_cpu_user"]


def run_scenario(scenario: Scenario, mock_url: str, api_url: str, client: redis.Redis, jobs) -> dict:
    """Saturate one vendor, measure its quota use, then wait for every job and measure Redis per job."""
    allowed = scenario.allowed()
    count = scenario.jobs or round(allowed * 1.03) + 2
    client.config_resetstat()
    cpu_before = redis_cpu_s(client)
    with ThreadPoolExecutor(1) as feeder:
        feeding = feeder.submit(submit_all, api_url, scenario.name, count)
        first = wait_until(lambda: stats(mock_url)["served"] and time.monotonic(), 60, "the first request", POLL_S)
        time.sleep(max(0.0, first + scenario.seconds - time.monotonic()))
        measured = stats(mock_url)
        feeding.result()

    def all_done() -> bool:
        return jobs.count_documents({"vendor": scenario.name, "status": JobStatus.COMPLETE.value}) >= count
    wait_until(all_done, 600, f"the {scenario.name} jobs to complete", 0.5)
    sent_us, evalsha_us = redis_time_us(client)
    return {
        "jobs": count, "served": measured["served"], "allowed": allowed, "refused": measured["refused"],
        "windows": measured["max_in_windows"], "in_progress": measured["max_in_progress"],
        "redis_us": sent_us / count, "evalsha_us": evalsha_us / count, "cpu_us": 1e6 * (redis_cpu_s(client) - cpu_before) / count,
    }


def limiter_alone_us(client: redis.Redis, scenario: Scenario, count: int) -> float:
    """Replay `count` jobs through the limiter alone; return its Redis µs per job."""
    replay(client, scenario, 1, "warm-up")  # loads the scripts before the count starts
    client.config_resetstat()
    replay(client, scenario, count)
    return redis_time_us(client)[0] / count


def replay(client: redis.Redis, scenario: Scenario, count: int, name: str = "replay") -> None:
    """Put `count` jobs through the limiter alone as the service does: an ADMIT, then, once its start is due,
    an ACQUIRE with the circuit breaker's check (and a release with max_in_flight)."""
    vendor = Vendor(f"{name}-{scenario.name}", "sync", "", scenario.rate_limit, max_in_flight=scenario.max_in_flight)
    limiter, breaker = RateLimiter(client, Config.rate_limit_margin_ms), CircuitBreaker(client)
    for n in range(count):
        time.sleep(limiter.admit(NewJob(vendor, f"job-{n}")).delay_ms / 1000)  # as its message would wait
        while wait_ms := limiter.acquire(vendor, f"job-{n}", breaker.check_args(vendor)).wait_ms:
            time.sleep(wait_ms / 1000)
        if vendor.max_in_flight:
            limiter.release(vendor, f"job-{n}")


def cpu_speed() -> float:
    """Return millions of simple Python loop steps a second: the machine's speed in this run."""
    started = time.perf_counter()
    total = 0
    for n in range(3_000_000):
        total += n
    return 3 / (time.perf_counter() - started)


@dataclass(frozen=True)
class Service:
    """The running service of a benchmark: its stack, API, mock vendors (by scenario) and data stores."""

    stack: Stack
    api_url: str
    mock_urls: dict[str, str]
    redis: redis.Redis
    jobs: Collection


@contextlib.contextmanager
def running_service(scenarios: list[Scenario], **env: str) -> Iterator[Service]:
    """Start the data stores, one mock vendor per scenario, the API and the workers (settings `env` added); stop them after."""
    with tempfile.TemporaryDirectory() as folder_name, data_stores(Path(folder_name)) as (redis_url, mongodb_uri):
        folder = Path(folder_name)
        api_port, *mock_ports = free_ports(1 + len(scenarios))
        (folder / "vendors.toml").write_text("\n".join(s.toml(port) for s, port in zip(scenarios, mock_ports)))
        stack = Stack({**service_env(redis_url, mongodb_uri, folder / "vendors.toml", api_port), "LOG_LEVEL": "WARNING", **env}, folder)
        try:
            for scenario, port in zip(scenarios, mock_ports):
                flags = ["--rate-limit", scenario.rate_limit, "--latency-ms", scenario.latency_ms, "--threads", "32"]
                stack.start_mock("sync", port, *flags, name=f"vendor-{scenario.name}")
            stack.start_api(api_port)
            stack.start_worker(processes=PROCESSES, threads=THREADS)
            yield Service(stack, f"http://127.0.0.1:{api_port}", {s.name: f"http://127.0.0.1:{port}" for s, port in zip(scenarios, mock_ports)},
                          redis.Redis.from_url(redis_url), jobs_collection(connect(mongodb_uri)))
        finally:
            stack.stop()


def run(scenarios: list[Scenario]) -> dict[str, dict]:
    """Run every scenario against one stack, then the limiter alone; return the figures by scenario."""
    figures: dict[str, dict] = {}
    with running_service(scenarios) as service:
        for scenario in scenarios:
            figures[scenario.name] = run_scenario(scenario, service.mock_urls[scenario.name], service.api_url, service.redis, service.jobs)
        service.stack.stop()
        for scenario in scenarios:  # as many jobs as the limits take in a few seconds
            replayed = max(10, min(figures[scenario.name]["jobs"], scenario.allowed(REPLAY_S)))
            figures[scenario.name]["limiter_us"] = limiter_alone_us(service.redis, scenario, replayed)
    return figures


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one row per scenario."""
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=[s.name for s in SCENARIOS], help="run only these scenarios")
    args = parser.parse_args(argv)
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    speed = cpu_speed()
    figures = run(scenarios)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {speed:.0f} M Python loop steps/s at the start;"
          f" workers {PROCESSES} processes x {THREADS} threads")
    print("| scenario | rate_limit | measured | quota used | 429s | fullest window of each limit | most in progress "
          "| Redis per job (EVALSHA) | Redis CPU per job | limiter alone per job |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for scenario in scenarios:
        f = figures[scenario.name]
        limits = Vendor("x", "sync", "", scenario.rate_limit).limits
        windows = ", ".join(f"{most} of {count}" for most, (count, _) in zip(f["windows"], limits))
        in_flight = f"{f['in_progress']} (max_in_flight {scenario.max_in_flight})" if scenario.max_in_flight else f["in_progress"]
        quota = f"{100 * f['served'] / f['allowed']:.1f} % ({f['served']} of {f['allowed']})" if not scenario.jobs else "-"
        print(f"| {scenario.name} | `{scenario.rate_limit}` | {scenario.seconds:g} s, {f['jobs']} jobs "
              f"| {quota} | {f['refused']} | {windows} "
              f"| {in_flight} | {f['redis_us']:.0f} µs ({f['evalsha_us']:.0f} µs) | {f['cpu_us']:.0f} µs | {f['limiter_us']:.0f} µs |")


if __name__ == "__main__":
    main()
