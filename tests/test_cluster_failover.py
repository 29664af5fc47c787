"""kill -9 of the primary holding the job queue, mid-stream: every job completes once, none is lost.

The run is devtools/failover.py (two worker processes, 3 + 3 cluster of its own); bench/cluster.py
runs it at full size. In the second run the replica is paused (SIGSTOP) before the kill, so it lags
behind everything written meanwhile: writes it never acknowledged were never counted as done.
"""

import pytest
from dramatiq.errors import ConnectionClosed

from devtools.cluster import LocalCluster
from devtools.failover import run_failover
from devtools.stack import wait_until
from queueing.broker import StreamsBroker
from queueing.connection import connect_redis
from queueing.messages import QUEUE_NAME, fetch_message
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



def test_a_consumer_keeps_reading_after_its_clients_default_node_dies(tmp_path):
    cluster = LocalCluster(tmp_path / "valkey").start()
    try:
        client = connect_redis(cluster.url, cluster=True)
        broker = StreamsBroker(client=client, wait_replicas=1)
        broker.declare_queue(QUEUE_NAME)
        queue_owner = client.get_node_from_key(QUEUE_NAME)
        bystander = next(node for node in client.get_primaries() if node.port != queue_owner.port)
        client.replace_default_node(bystander)  # the node redis-py's own xreadgroup asks for the command's keys
        consumer = broker.consume(QUEUE_NAME, timeout=100)
        assert next(consumer) is None  # the group exists before the kill

        next(node for node in cluster.nodes if node.port == bystander.port).kill()
        sent = fetch_message("after-the-kill")
        wait_until(lambda: outlives_outage(lambda: broker.enqueue(sent)), 60, "the queue to take a message")
        received = wait_until(lambda: outlives_outage(lambda: next(consumer)), 60, "the message to be delivered")

        assert received.message_id == sent.message_id
        client.close()
    finally:
        cluster.stop()


def outlives_outage(call):
    """Return what `call` returns, or None while the cluster is failing over."""
    try:
        return call()
    except ConnectionClosed:
        return None
