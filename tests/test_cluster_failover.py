"""kill -9 of the primary holding the job queue, mid-stream: every job completes, none is lost.

A steady stream of jobs goes through the API to two worker processes on a cluster of its own
(3 primaries + 3 replicas, 2 s node timeout; queue writes wait for one replica). The primary that
holds the job queue is killed mid-run and, once its replica took over, restarted the way a
supervisor would, so that its shard has a replica again. In the second run the replica is paused
(SIGSTOP) for a while before the kill, so it lags behind everything written meanwhile: writes it
never acknowledged were never counted as done. bench/cluster.py runs the first at full size.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import pytest
import requests

from devtools.cluster import LocalCluster
from devtools.stack import Stack, free_ports, service_env, vendors_toml, wait_until
from queueing.messages import QUEUE_NAME
from tests.conftest import with_database

pytestmark = pytest.mark.cluster

JOBS = 400
RATE_PER_S = 40
KILL_AFTER_JOBS = 120
PAUSED_FOR_JOBS = 40
DATABASE = "cluster_failover"


@dataclass
class Submissions:
    """What the API answered, and when."""

    accepted: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    slowest_s: float = 0.0
    not_accepted_at: list[float] = field(default_factory=list)


def submit_steadily(url: str, jobs: int, rate_per_s: float, into: Submissions) -> None:
    """POST jobs at a steady pace; a refused one (503) is sent again later, as a client would."""
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
            status = 0  # no answer at all: counted as a failure of the API
        into.slowest_s = max(into.slowest_s, time.monotonic() - asked)
        into.statuses.append(status)
        if status == 202:
            into.accepted.append(response.json()["request_id"])
        else:
            into.not_accepted_at.append(asked)


def span_s(iso_times: list[str]) -> float:
    """Return the seconds from the first to the last of ISO times."""
    times = sorted(datetime.fromisoformat(text) for text in iso_times)
    return (times[-1] - times[0]).total_seconds() if times else 0.0


def largest_gap_s(times: list) -> float:
    """Return the longest pause between consecutive times (datetimes)."""
    ordered = sorted(times)
    return max(((b - a).total_seconds() for a, b in zip(ordered, ordered[1:])), default=0.0)


@pytest.mark.parametrize("paused_replica", [False, True], ids=["healthy-replica", "paused-replica"])
def test_kill_9_of_the_job_queues_primary_loses_no_job_and_the_api_answers_only_202_or_503(
    tmp_path, mongodb_uri, mongo_client, paused_replica,
):
    cluster = LocalCluster(tmp_path / "valkey").start()
    api_port, sync_port = free_ports(2)
    registry = tmp_path / "vendors.toml"
    registry.write_text(vendors_toml(sync_port, free_ports(1)[0]))
    env = service_env(cluster.url, with_database(mongodb_uri, DATABASE), registry, api_port)
    stack = Stack({**env, "REDIS_CLUSTER": "true", "ORPHAN_AFTER_S": "5", "SWEEP_INTERVAL_S": "1", "CLOCK_LEASE_S": "3"}, tmp_path)
    jobs = mongo_client[DATABASE]["jobs"]
    try:
        stack.start_mock("sync", sync_port)
        stack.start_api(api_port)
        stack.start_worker(processes=2, threads=4)
        stack.start_clock()
        url = f"http://127.0.0.1:{api_port}"
        submissions = Submissions()
        submitter = threading.Thread(target=submit_steadily, args=(url, JOBS, RATE_PER_S, submissions), daemon=True)
        submitter.start()

        wait_until(lambda: len(submissions.accepted) >= KILL_AFTER_JOBS, 60, "the stream to be under way", interval_s=0.05)
        victim = cluster.node_serving(QUEUE_NAME)
        heir = cluster.replica_of(victim)
        if paused_replica:
            os.kill(heir.process.pid, signal.SIGSTOP)
            wait_until(lambda: len(submissions.accepted) >= KILL_AFTER_JOBS + PAUSED_FOR_JOBS, 60, "jobs while the replica sleeps")
        victim.kill()
        killed_at = time.monotonic()
        if paused_replica:
            os.kill(heir.process.pid, signal.SIGCONT)
        wait_until(lambda: cluster.is_primary(heir) and cluster.is_ok_at(heir), 60, "the replica to take over")
        promoted_after_s = time.monotonic() - killed_at
        victim.start()  # back as a replica of the promoted node
        cluster.wait_until_whole(60)
        submitter.join(timeout=120)
        assert not submitter.is_alive(), "the submissions never finished"

        wait_until(lambda: jobs.count_documents({"status": "complete"}) >= JOBS, 120, "every accepted job to complete", interval_s=0.5)
        finished = list(jobs.find({}, {"status": 1, "finished_at": 1}))
        vendor_calls = requests.get(f"http://127.0.0.1:{sync_port}/stats", timeout=5).json()["served"]
        failed_enqueues = [event["time"] for event in stack.process("api").logged_events() if "enqueue failed" in event["message"]]
    finally:
        stack.stop()
        cluster.stop()
        mongo_client.drop_database(DATABASE)

    statuses = set(submissions.statuses)
    assert statuses <= {202, 503}, f"the API answered {statuses}"
    assert len(finished) == len(submissions.accepted) == JOBS
    assert {job["_id"] for job in finished} == set(submissions.accepted)
    assert {job["status"] for job in finished} == {"complete"}
    api_outage_s = (max(submissions.not_accepted_at) - min(submissions.not_accepted_at)) if submissions.not_accepted_at else 0.0
    print(f"\nfailover{' after pausing the replica' if paused_replica else ''}: promoted {promoted_after_s:.1f} s after the kill; API: {submissions.statuses.count(503)} answers 503 "
          f"over {api_outage_s:.1f} s, slowest answer {submissions.slowest_s:.2f} s; workers: longest pause between two "
          f"completions {largest_gap_s([job['finished_at'] for job in finished]):.1f} s; {len(failed_enqueues)} jobs accepted "
          f"but left pending for the clock over {span_s(failed_enqueues):.1f} s; {vendor_calls - JOBS} vendor calls repeated")
