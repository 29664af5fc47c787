"""kill -9 of the primary holding the job queue, mid-stream: every job completes once, none is lost.

The run is devtools/failover.py (two worker processes, 3 + 3 cluster of its own); bench/cluster.py
runs it at full size. In the second run the replica is paused (SIGSTOP) before the kill, so it lags
behind everything written meanwhile: writes it never acknowledged were never counted as done.
"""

import pytest

from devtools.failover import run_failover
from tests.conftest import with_database

pytestmark = pytest.mark.cluster

JOBS = 400
RATE_PER_S = 40
KILL_AFTER_JOBS = 120
PAUSED_FOR_JOBS = 40


@pytest.mark.parametrize("paused_for_jobs", [0, PAUSED_FOR_JOBS], ids=["healthy-replica", "paused-replica"])
def test_kill_9_of_the_job_queues_primary_loses_no_job_and_the_api_answers_only_202_or_503(tmp_path, mongodb_uri, paused_for_jobs):
    run = run_failover(tmp_path, with_database(mongodb_uri, "cluster_failover"), JOBS, RATE_PER_S, KILL_AFTER_JOBS, paused_for_jobs)

    statuses = set(run.submissions.statuses)
    assert statuses <= {202, 503}, f"the API answered {statuses}"
    assert len(run.jobs) == len(run.submissions.accepted) == JOBS
    assert {job["_id"] for job in run.jobs} == set(run.submissions.accepted)
    assert {job["status"] for job in run.jobs} == {"complete"}
    print(f"\nfailover{' after pausing the replica' if paused_for_jobs else ''}: {run.summary()}")
