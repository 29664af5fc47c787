"""Share one rate-limited vendor between clients through the whole service: each client's starts against its weighted share.

    .venv/bin/python -m bench.fairness [--only NAME ...] [--scale 1.0]

It measures from the outside, whatever order the service starts jobs in: through the API
(AUTH=keys, an API key per client, each client made with its weight and no request limit), the
jobs' MongoDB documents and Redis's INFO. Each scenario runs on a fresh stack, bench.ratelimit's:
the API, 2 worker processes of 8 threads, a mock sync vendor per vendor that enforces its limit
(429 beyond it) and answers in 20-80 ms, embedded data stores unless REDIS_URL / MONGODB_URI are
set (give it scratch ones: it leaves jobs behind, and a bounded scenario leaves them waiting).

- heavy-and-light: a vendor of 10/second; client a submits 10,000 jobs, then, a second after they
  are in, clients b to j submit 100 each at once. Measured until b-j have all started and 2 s
  more, or for 150 s after their submission at most.
- weights: a vendor of 10/second; clients a (weight 3) and b (weight 1) submit 1,500 jobs each at
  once. Measured for 60 s from the first submission.
- many-clients: a vendor of 100/second each; 10,000 jobs from 10 clients, then 10,000 jobs from
  10,000 clients of one job each, each drained.

A job's start is its first entry into `processing` in its MongoDB history (the worker claims a
job just before it calls the vendor). A client waits while it has a job submitted and not yet
started. Its share: of all the starts while it waited, the fraction that were its own. Its
weighted share: its weight over the weights of all the clients waiting at each of those starts,
averaged over them. Their ratio is its starts over the starts its weight entitled it to. Quota:
the mock's own count of the calls it accepted, from the first start to the end of the
measurement, against its limit over that time. Redis time: the µs of the commands clients sent
(`INFO commandstats` after CONFIG RESETSTAT at the scenario's start, as bench.ratelimit counts
them); drained, over the jobs; where the measurement stops with jobs waiting, the time until every
job was submitted over the jobs submitted, plus the time after over the starts after. --scale
multiplies the job and client counts and the measured times.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from bench import machine, ratelimit
from devtools.stack import wait_until
from service.clients.store import ClientStore
from service.config import Config
from service.store import open_store

SUBMITTERS = 16
#: After the light clients have all started, the heavy one's share coming back is measured this long.
TAIL_S = 2.0
DRAIN_S = 600
#: Targets of the issue, printed beside the figures.
MIN_RATIO = 0.95
MAX_FIRST_START_S = 2.0
SHARE_POINTS = 3.0
MIN_QUOTA = 0.95
MAX_COST_RATIO = 1.5


@dataclass(frozen=True)
class Job:
    client: str
    submitted: float  # Unix time
    started: float | None  # Unix time; None: not started by the end of the measurement


@dataclass
class ClientShare:
    """One client's jobs and starts over a measurement, and the starts its weight entitled it to."""

    weight: int
    jobs: int = 0
    started: int = 0
    starts_while_waiting: int = 0  # everyone's starts while it had a job waiting
    entitled: float = 0.0  # at each of those starts, its weight over the waiting clients' weights
    first_submitted: float = float("inf")
    first_start: float | None = None
    last_start: float | None = None

    def share(self) -> float:
        return self.started / self.starts_while_waiting if self.starts_while_waiting else 0.0

    def weighted_share(self) -> float:
        return self.entitled / self.starts_while_waiting if self.starts_while_waiting else 0.0

    def ratio(self) -> float:
        return self.started / self.entitled if self.entitled else float("nan")


@dataclass(frozen=True)
class Submitted:
    at: float  # Unix time the last submission was answered
    redis_us: float  # Redis's time from the reset until then
    waves_s: list[float]  # how long each wave of submissions took

    def took(self) -> str:
        return " then ".join(f"{took_s:.1f} s" for took_s in self.waves_s)


@dataclass(frozen=True)
class Outcome:
    """What one vendor's measurement gave: its jobs, when it ended, the vendor's own counts and Redis's time."""

    jobs: list[Job]
    submitted: Submitted
    ended_at: float
    served: int
    refused: int
    redis_us: float  # from the reset until the outcome was read

    def first_start(self) -> float:
        return min(job.started for job in self.jobs if job.started is not None)

    def starts(self, after: float = 0.0) -> int:
        return sum(1 for job in self.jobs if job.started is not None and after < job.started <= self.ended_at)


def shares(jobs: list[Job], weights: dict[str, int], until: float) -> dict[str, ClientShare]:
    """Go through the submissions and starts up to `until` in time order: each client's starts and those it was entitled to."""
    events = sorted([(job.submitted, False, job.client) for job in jobs if job.submitted <= until]
                    + [(job.started, True, job.client) for job in jobs if job.started is not None and job.started <= until])
    result = {name: ClientShare(weight) for name, weight in weights.items()}
    waiting: Counter[str] = Counter()
    weights_waiting = starts = 0
    per_weight = 0.0  # the sum, over the starts so far, of one over the weights of the clients waiting
    began: dict[str, tuple[int, float]] = {}  # each waiting client's (starts, per_weight) when it began to wait

    def stop_waiting(name: str) -> None:
        starts_then, per_weight_then = began.pop(name)
        result[name].starts_while_waiting += starts - starts_then
        result[name].entitled += weights[name] * (per_weight - per_weight_then)

    for at, is_start, name in events:
        client = result[name]
        if not is_start:
            if not waiting[name]:
                began[name] = (starts, per_weight)
                weights_waiting += weights[name]
            waiting[name] += 1
            client.jobs += 1
            client.first_submitted = min(client.first_submitted, at)
            continue
        starts += 1
        per_weight += 1 / weights_waiting
        client.started += 1
        if client.first_start is None:
            client.first_start = at
        client.last_start = at
        waiting[name] -= 1
        if not waiting[name]:
            weights_waiting -= weights[name]
            stop_waiting(name)
    for name in list(began):
        stop_waiting(name)
    return result


def add_clients(service: ratelimit.Service, weights: dict[str, int]) -> dict[str, str]:
    """Make each client with its weight and no request limit; return their API keys by name."""
    store = open_store(Config.from_env(service.stack.env))
    clients = ClientStore(store.collection.database, store.cipher)
    return {name: clients.add(name, weight=weight, rate_per_s=None)[1] for name, weight in weights.items()}


def submit(api_url: str, vendor: str, keys: list[str]) -> None:
    """Submit one job for each API key in `keys`, in their order, from a few threads with a session each."""
    local = threading.local()

    def one(key: str) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(f"{api_url}/jobs", json={"name": "Bench"}, params={"vendor": vendor},
                                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
        response.raise_for_status()

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        list(pool.map(one, keys))


def interleaved(keys: dict[str, str], jobs_each: int) -> list[str]:
    """Return each client's key `jobs_each` times, the clients taking turns."""
    return [key for _ in range(jobs_each) for key in keys.values()]


def started(service: ratelimit.Service, clients: list[str]) -> int:
    return service.jobs.count_documents({"client": {"$in": clients}, "history.state": "processing"})


def read_jobs(service: ratelimit.Service, vendor: str) -> list[Job]:
    """Return the vendor's jobs: their client, submission and first entry into processing."""
    jobs = []
    for document in service.jobs.find({"vendor": vendor}, {"client": True, "created_at": True, "history": True}):
        start = next((entry["at"] for entry in document["history"] if entry.get("state") == "processing"), None)
        jobs.append(Job(document["client"], document["created_at"].timestamp(), start and start.timestamp()))
    return jobs


def submit_in_waves(service: ratelimit.Service, vendor: str, waves: list[list[str]]) -> Submitted:
    """Reset Redis's statistics, then submit each wave of keys once the one before is in and a second has passed."""
    service.redis.config_resetstat()
    waves_s = []
    for n, keys in enumerate(waves):
        time.sleep(1.0 if n else 0.0)
        began = time.monotonic()
        submit(service.api_url, vendor, keys)
        waves_s.append(time.monotonic() - began)
    return Submitted(time.time(), ratelimit.redis_time_us(service.redis)[0], waves_s)


def end_measurement(service: ratelimit.Service, vendor: str, submitted: Submitted, ended_at: float | None = None) -> Outcome:
    """Read the vendor's counts, Redis's time and the vendor's jobs; the measurement ended now, or at `ended_at`."""
    ended_at, counts = ended_at or time.time(), ratelimit.stats(service.mock_urls[vendor])
    redis_us = ratelimit.redis_time_us(service.redis)[0]
    return Outcome(read_jobs(service, vendor), submitted, ended_at, counts["served"], counts["refused"], redis_us)


def verdict(passed: bool) -> str:
    return "pass" if passed else "miss"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def quota_used(vendor: ratelimit.Scenario, outcome: Outcome) -> str:
    """Describe the calls the vendor accepted from the first start to the end against what its limit allows, with the target."""
    measured_s = outcome.ended_at - outcome.first_start()
    allowed = vendor.allowed(measured_s)
    quota = outcome.served / allowed
    return (f"{100 * quota:.1f} % ({outcome.served} of {allowed} in {measured_s:.1f} s;"
            f" target ≥ {100 * MIN_QUOTA:.0f} %: {verdict(quota >= MIN_QUOTA)})")


def vendor_lines(vendor: ratelimit.Scenario, outcome: Outcome, redis_per_job: str) -> list[str]:
    """Describe the vendor's quota use and 429s, and Redis's time per job."""
    return [
        f"vendor `{vendor.rate_limit}`: quota used {quota_used(vendor, outcome)}; 429s {outcome.refused}"
        f" (target 0: {verdict(outcome.refused == 0)})",
        f"Redis per job: {redis_per_job}; target: no more than main's",
    ]


def waiting_redis_per_job(outcome: Outcome) -> str:
    """Return Redis's time per job of a measurement that stopped with jobs waiting: per submission plus per start after."""
    submitting = outcome.submitted.redis_us / len(outcome.jobs)
    starting = (outcome.redis_us - outcome.submitted.redis_us) / max(outcome.starts(after=outcome.submitted.at), 1)
    return f"{submitting + starting:.0f} µs ({submitting:.0f} µs a job submitted + {starting:.0f} µs a start after)"


def share_table(outcome: Outcome, weights: dict[str, int], target: Callable[[str, ClientShare], str]) -> list[str]:
    """Return a row per client: its jobs, starts, share against weighted share, first and last start; `target` the last column."""
    rows = ["first and last start: from the client's first submission to its first start, and to the start of its last job"
            " (-: none, or not all, started by the end)",
            "| client | weight | jobs | started | share of starts while waiting | weighted share | ratio | first start"
            " | last start | target |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, client in shares(outcome.jobs, weights, outcome.ended_at).items():
        first = client.first_start and client.first_start - client.first_submitted
        last = client.last_start - client.first_submitted if client.started == client.jobs else None
        rows.append(f"| {name} | {client.weight} | {client.jobs} | {client.started} | {100 * client.share():.1f} %"
                    f" | {100 * client.weighted_share():.1f} % | {client.ratio():.2f} | {seconds(first)} | {seconds(last)}"
                    f" | {target(name, client)} |")
    return rows


def heavy_and_light(scale: float) -> list[str]:
    """Client a submits 10,000 jobs, then b-j 100 each: measure until b-j have all started."""
    vendor = ratelimit.Scenario("shared", "10/second", 150 * scale)
    light = list("bcdefghij")
    weights = {"a": 1, **dict.fromkeys(light, 1)}
    heavy_jobs, light_jobs = round(10_000 * scale), round(100 * scale)
    with ratelimit.running_service([vendor], AUTH="keys") as service:
        keys = add_clients(service, weights)
        waves = [[keys["a"]] * heavy_jobs, interleaved({name: keys[name] for name in light}, light_jobs)]
        submitted = submit_in_waves(service, vendor.name, waves)
        deadline = submitted.at + vendor.seconds
        wait_until(lambda: started(service, light) >= len(light) * light_jobs or time.time() > deadline,
                   vendor.seconds + 60, "clients b-j to start", 0.5)
        time.sleep(TAIL_S if time.time() < deadline else 0.0)
        outcome = end_measurement(service, vendor.name, submitted)

    def target(name: str, client: ClientShare) -> str:
        ratio = f"ratio ≥ {MIN_RATIO}: {verdict(client.ratio() >= MIN_RATIO)}"
        if name == "a":
            return ratio
        first = client.first_start is not None and client.first_start - client.first_submitted <= MAX_FIRST_START_S
        return f"{ratio}; first start ≤ {MAX_FIRST_START_S:g} s: {verdict(first)}"

    return [f"a: {heavy_jobs} jobs, then b-j: {light_jobs} each, all weight 1; submitted in {outcome.submitted.took()};"
            f" measured {outcome.ended_at - outcome.first_start():.1f} s from the first start ({outcome.starts()} starts)",
            *share_table(outcome, weights, target), *vendor_lines(vendor, outcome, waiting_redis_per_job(outcome))]


def weighted(scale: float) -> list[str]:
    """Clients of weights 3 and 1 submit 1,500 jobs each together: measure their shares of the starts."""
    vendor = ratelimit.Scenario("shared", "10/second", 60 * scale)
    weights = {"a": 3, "b": 1}
    jobs_each = round(1_500 * scale)
    with ratelimit.running_service([vendor], AUTH="keys") as service:
        keys = add_clients(service, weights)
        began = time.time()
        submitted = submit_in_waves(service, vendor.name, [interleaved(keys, jobs_each)])
        time.sleep(max(0.0, began + vendor.seconds - time.time()))
        outcome = end_measurement(service, vendor.name, submitted)

    def target(name: str, client: ClientShare) -> str:
        wanted = 100 * weights[name] / sum(weights.values())
        return f"{wanted:.0f} % ± {SHARE_POINTS:g}: {verdict(abs(100 * client.share() - wanted) <= SHARE_POINTS)}"

    return [f"a (weight 3) and b (weight 1): {jobs_each} jobs each, together; submitted in {outcome.submitted.took()};"
            f" measured {outcome.ended_at - outcome.first_start():.1f} s from the first start ({outcome.starts()} starts)",
            *share_table(outcome, weights, target), *vendor_lines(vendor, outcome, waiting_redis_per_job(outcome))]


def many_clients(scale: float) -> list[str]:
    """The same number of jobs from 10 clients, then from as many clients of one job each, each drained: Redis per job."""
    count = round(10_000 * scale)
    few = {f"few{n}": 1 for n in range(10)}
    many = {f"one{n:05d}": 1 for n in range(count)}
    vendors = [ratelimit.Scenario("ten-clients", "100/second", 0), ratelimit.Scenario("one-job-each", "100/second", 0)]
    rows = ["| clients | jobs | submitted in | quota used | 429s (target 0) | submission to start: median, max | Redis per job |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    per_job = []
    with ratelimit.running_service(vendors, AUTH="keys") as service:
        keys = add_clients(service, {**few, **many})
        for vendor, clients in zip(vendors, (few, many)):
            submitted = submit_in_waves(service, vendor.name, [interleaved({name: keys[name] for name in clients}, count // len(clients))])
            wait_until(lambda: ratelimit.stats(service.mock_urls[vendor.name])["served"] >= count, DRAIN_S,
                       f"{count} calls to {vendor.name}", ratelimit.POLL_S)
            ended_at = time.time()
            wait_until(lambda: service.jobs.count_documents({"vendor": vendor.name, "status": "complete"}) >= count,
                       DRAIN_S, f"the {vendor.name} jobs to complete", 0.5)
            outcome = end_measurement(service, vendor.name, submitted, ended_at)
            per_job.append(outcome.redis_us / count)
            waits = [job.started - job.submitted for job in outcome.jobs if job.started is not None]
            rows.append(f"| {len(clients)} | {count} | {submitted.took()} | {quota_used(vendor, outcome)}"
                        f" | {outcome.refused}: {verdict(outcome.refused == 0)}"
                        f" | {statistics.median(waits):.1f} s, {max(waits):.1f} s | {per_job[-1]:.0f} µs |")
    ratio = per_job[1] / per_job[0]
    return [f"a vendor of `{vendors[0].rate_limit}` each, drained", *rows,
            f"Redis per job, {len(many)} clients against 10: ×{ratio:.2f} (target ≤ ×{MAX_COST_RATIO:g}: {verdict(ratio <= MAX_COST_RATIO)})"]


SCENARIOS = {"heavy-and-light": heavy_and_light, "weights": weighted, "many-clients": many_clients}


def main(argv: list[str] | None = None) -> None:
    """Run the scenarios one after another, printing each one's figures as it ends."""
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the job and client counts and the measured times")
    args = parser.parse_args(argv)
    print(machine.describe())
    print(f"workers {ratelimit.PROCESSES} processes x {ratelimit.THREADS} threads; a start: a job's first entry into"
          " `processing` in its MongoDB history")
    for name, scenario in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        began = time.monotonic()
        lines = scenario(args.scale)
        print(f"\n## {name} (took {time.monotonic() - began:.0f} s)")
        print("\n".join(lines), flush=True)
    print(machine.describe())


if __name__ == "__main__":
    main()
