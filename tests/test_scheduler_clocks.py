"""Real `python -m scheduler.clock` processes competing for the lease."""

import json
import time
from datetime import datetime

import pytest

from devtools.stack import Stack, wait_until
from queueing.lease import SWEEPS_KEY

LEASE_S = 1.0
SWEEP_INTERVAL_S = 0.1


@pytest.fixture
def stack(config, tmp_path):
    stack = Stack({
        "REDIS_URL": config.redis_url,
        "MONGODB_URI": config.mongodb_uri,
        "ENCRYPTION_KEY": config.encryption_key,
        "SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "CLOCK_LEASE_S": str(LEASE_S),
        "LOG_LEVEL": "DEBUG",  # a sweep that found nothing to do is logged at DEBUG
    }, tmp_path)
    yield stack
    stack.stop()


def sweeps_in_log(clock):
    """Return the (started, finished) times of every sweep a clock process logged."""
    return [
        (datetime.fromisoformat(r["started_at"]).timestamp(), datetime.fromisoformat(r["finished_at"]).timestamp())
        for r in clock.logged_events() if "sweep" in r and "counts" in r
    ]


def test_two_clocks_never_sweep_at_once_and_one_takes_over_within_a_lease_when_the_leader_is_killed(stack, redis_client):
    clocks = [stack.start_clock("clock-a"), stack.start_clock("clock-b")]
    leader_id = wait_until(lambda: redis_client.hget(SWEEPS_KEY, "leader"), 15, "a clock to lead").decode()
    leader, standby = sorted(clocks, key=lambda clock: f"-{clock.process.pid}-" not in leader_id)
    wait_until(lambda: len(sweeps_in_log(leader)) >= 10, 10, "the leader to sweep a few times")
    assert sweeps_in_log(standby) == []

    leader.kill()
    killed_at = time.time()
    swept_before_kill = sweeps_in_log(leader)
    first_started, _ = wait_until(lambda: sweeps_in_log(standby)[:1], LEASE_S + 5, "the standby to take over")[0]

    assert first_started - killed_at < LEASE_S + SWEEP_INTERVAL_S + 1.0
    assert max(finished for _, finished in swept_before_kill) <= killed_at < first_started
    new_leader = redis_client.hget(SWEEPS_KEY, "leader").decode()
    assert f"-{standby.process.pid}-" in new_leader
    for sweep in ("orphans", "webhook_timeouts"):
        recorded = wait_until(lambda: recorded_by(redis_client, sweep, new_leader), 2, f"{sweep} by the new leader")
        assert set(recorded) == {"started_at", "finished_at", "duration_ms", "by", "counts"}


def recorded_by(redis_client, sweep, leader):
    record = json.loads(redis_client.hget(SWEEPS_KEY, sweep))
    return record if record["by"] == leader else None
