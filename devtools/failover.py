"""kill -9 of the primary holding the job queue while jobs stream through the service on a local cluster.

A steady stream of jobs goes through the API to two worker processes (and a clock) on a cluster of
its own: 3 primaries + 3 replicas, 2 s node timeout, queue writes waiting for one replica. The
primary that holds the job queue is killed mid-run and, once its replica took over, restarted the
way a supervisor would, so that its shard has a replica again. With `paused_for_jobs`, the replica
is paused (SIGSTOP) while that many jobs are accepted, just before the kill, so that it lags behind
everything written meanwhile.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pymongo
import requests

from devtools.cluster import LocalCluster
from devtools.stack import Stack, free_ports, service_env, vendors_toml, wait_until
from queueing.messages import QUEUE_NAME

@dataclass
class Submissions:
    """What the API answered, and when."""

    accepted: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    slowest_s: float = 0.0
    refused_at: list[float] = field(default_factory=list)


@dataclass
class FailoverRun:
    """What a run saw."""

    submissions: Submissions
    jobs: list[dict]  # every stored job: _id, status, finished_at
    promoted_after_s: float
    failed_enqueues: list[str]  # when the API left a job pending for the clock (ISO times)
    vendor_calls: int

    def summary(self) -> str:
        """Describe the outage as the API and the workers saw it."""
        statuses = self.submissions.statuses
        refused = self.submissions.refused_at
        refused_s = max(refused) - min(refused) if refused else 0.0
        return (
            f"promoted {self.promoted_after_s:.1f} s after the kill; API: {statuses.count(503)} answers 503 over "
            f"{refused_s:.1f} s, slowest answer {self.submissions.slowest_s:.2f} s, {len(self.failed_enqueues)} jobs "
            f"accepted but left pending for the clock over {span_s(self.failed_enqueues):.1f} s; workers: longest pause "
            f"between two completions {largest_gap_s([job['finished_at'] for job in self.jobs if job.get('finished_at')]):.1f} s; "
            f"{self.vendor_calls - len(self.submissions.accepted)} vendor calls repeated"
        )


def submit_steadily(url: str, jobs: int, rate_per_s: float, into: Submissions) -> None:
    """POST jobs at a steady pace until `jobs` are accepted; a refused one is sent again later, as a client would."""
    started = time.monotonic()
    sent = 0
    while len(into.accepted) < jobs:
        time.sleep(max(started + sent / rate_per_s - time.monotonic(), 0))
        sent += 1
        asked = time.monotonic()
        try:
            response = requests.post(f"{url}/jobs", json={"name": "Ann"}, params={"vendor": "sync"}, timeout=30)
            status = response.status_code
        except requests.RequestException:
            status = 0  # no answer at all
        into.slowest_s = max(into.slowest_s, time.monotonic() - asked)
        into.statuses.append(status)
        if status == 202:
            into.accepted.append(response.json()["request_id"])
        else:
            into.refused_at.append(asked)


def span_s(iso_times: list[str]) -> float:
    """Return the seconds from the first to the last of ISO times."""
    times = sorted(datetime.fromisoformat(text) for text in iso_times)
    return (times[-1] - times[0]).total_seconds() if times else 0.0


def largest_gap_s(times: list[datetime]) -> float:
    """Return the longest pause between consecutive times."""
    ordered = sorted(times)
    return max(((b - a).total_seconds() for a, b in zip(ordered, ordered[1:])), default=0.0)


def run_failover(folder: Path, database_uri: str, jobs: int, rate_per_s: float, kill_after_jobs: int,
                 paused_for_jobs: int = 0, finish_timeout_s: float = 120.0) -> FailoverRun:
    """Stream `jobs` through the service, kill the job queue's primary after `kill_after_jobs`; wait for every job.

    The jobs are stored in the database `database_uri` names, dropped at the end.
    """
    cluster = LocalCluster(folder / "valkey").start()
    api_port, sync_port, async_port = free_ports(3)
    registry = folder / "vendors.toml"
    registry.write_text(vendors_toml(sync_port, async_port))
    env = service_env(cluster.url, database_uri, registry, api_port)
    # Messages held by a consumer that lost its node wait for the visibility timeout: a short one
    # keeps the run short.
    stack = Stack({**env, "REDIS_CLUSTER": "true", "ORPHAN_AFTER_S": "5", "SWEEP_INTERVAL_S": "1", "CLOCK_LEASE_S": "3",
                   "VISIBILITY_TIMEOUT_MS": "5000"}, folder)
    mongo = pymongo.MongoClient(database_uri)
    collection = mongo.get_default_database()["jobs"]
    try:
        stack.start_mock("sync", sync_port, "--rate-limit", "6000/minute")  # the registry's limit
        stack.start_api(api_port)
        stack.start_worker(processes=2, threads=4)
        stack.start_clock()
        submissions = Submissions()
        url = f"http://127.0.0.1:{api_port}"
        submitter = threading.Thread(target=submit_steadily, args=(url, jobs, rate_per_s, submissions), daemon=True)
        submitter.start()

        wait_until(lambda: len(submissions.accepted) >= kill_after_jobs, 60, "the stream to be under way", interval_s=0.05)
        victim = cluster.node_serving(QUEUE_NAME)
        heir = cluster.replica_of(victim)
        if paused_for_jobs:
            os.kill(heir.process.pid, signal.SIGSTOP)
            wait_until(lambda: len(submissions.accepted) >= kill_after_jobs + paused_for_jobs, 60, "jobs while the replica sleeps")
        victim.kill()
        killed_at = time.monotonic()
        if paused_for_jobs:
            os.kill(heir.process.pid, signal.SIGCONT)
        wait_until(lambda: cluster.is_primary(heir) and cluster.is_ok_at(heir), 60, "the replica to take over")
        promoted_after_s = time.monotonic() - killed_at
        victim.start()  # back as a replica of the promoted node
        cluster.wait_until_whole(60)
        submitter.join(timeout=jobs / rate_per_s + 120)
        if submitter.is_alive():
            raise AssertionError("the submissions never finished")

        try:
            wait_until(lambda: collection.count_documents({"status": "complete"}) >= jobs, finish_timeout_s,
                       "every accepted job to complete", interval_s=0.5)
        except AssertionError as error:
            states = {status: collection.count_documents({"status": status}) for status in collection.distinct("status")}
            failed = collection.find_one({"status": {"$ne": "complete"}}, {"payload": False})
            raise AssertionError(f"{error}: jobs by state {states}; one of them: {failed}") from None
        return FailoverRun(
            submissions=submissions,
            jobs=list(collection.find({}, {"status": 1, "finished_at": 1})),
            promoted_after_s=promoted_after_s,
            failed_enqueues=[event["time"] for event in stack.process("api").logged_events() if "enqueue failed" in event["message"]],
            vendor_calls=requests.get(f"http://127.0.0.1:{sync_port}/stats", timeout=5).json()["served"],
        )
    finally:
        stack.stop()
        cluster.stop()
        mongo.drop_database(collection.database.name)
        mongo.close()
