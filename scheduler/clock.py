"""The clock process: `python -m scheduler.clock` runs the sweeps at their interval while it leads."""

from __future__ import annotations

import logging
import signal
import sys
from datetime import timedelta
from functools import partial

from apscheduler.schedulers.blocking import BlockingScheduler

from queueing.connection import build_broker, connect_redis
from queueing.lease import LeaderLease
from queueing.ratelimit import RateLimiter
from scheduler.runs import run_if_leader
from scheduler.sweeps import dispatch_waiting, purge_expired_jobs, queue_missed_callbacks, requeue_orphans, time_out_webhooks
from service.config import Config
from service.logs import configure_logging
from service.outcomes import Outcomes
from service.store import open_store
from vendors.registry import load_registry

#: How often the clock dispatches jobs whose turn came where no worker did (a seldom gap: see dispatch_waiting).
DISPATCH_INTERVAL_S = 1


def main() -> None:
    """Schedule every sweep, take part in the leader election, and block until stopped."""
    config = Config.from_env()
    configure_logging(config.log_level)
    # APScheduler logs every run at INFO; the sweeps log what they changed.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # A platform stops processes with SIGTERM; leave the blocking loop as Ctrl-C would.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    store, registry = open_store(config), load_registry(config.vendors_file)
    redis_client = connect_redis(config.redis_url, config.redis_cluster)
    broker = build_broker(
        redis_client, visibility_timeout_ms=config.visibility_timeout_ms, wait_replicas=config.redis_wait_replicas,
        outage_retry_s=config.redis_outage_retry_s,
    )
    outcomes = Outcomes(store, broker if config.callback_secret else None)
    lease = LeaderLease(redis_client, config.clock_lease_s)
    limiter = RateLimiter(redis_client, config.rate_limit_margin_ms)
    orphan_after, every = timedelta(seconds=config.orphan_after_s), config.sweep_interval_s
    sweeps = {  # name: (sweep, seconds between runs)
        "webhook_timeouts": (partial(time_out_webhooks, store, outcomes, registry, broker), every),
        "orphans": (partial(requeue_orphans, store, registry, broker, limiter, orphan_after), every),
        "retention": (partial(purge_expired_jobs, store), every),
        "dispatch": (partial(dispatch_waiting, limiter, registry, broker), DISPATCH_INTERVAL_S),
    }
    if config.callback_secret:
        sweeps["missed_callbacks"] = (partial(queue_missed_callbacks, store, broker, orphan_after), every)
    scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    for name, (sweep, interval_s) in sweeps.items():
        scheduler.add_job(run_if_leader, "interval", seconds=interval_s, id=name, args=(lease, redis_client, name, sweep))
    lease.start()
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        # Let a running sweep finish before handing the lease to another clock.
        scheduler.shutdown(wait=True)
    finally:
        lease.stop()


if __name__ == "__main__":
    main()
