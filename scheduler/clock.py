"""The clock process: `python -m scheduler.clock` runs the sweeps at their intervals."""

from __future__ import annotations

import logging
import signal
import sys
from datetime import timedelta
from functools import partial

from apscheduler.schedulers.blocking import BlockingScheduler

from actors.queue import enqueue_fetch
from actors.setup import build_broker, connect_redis
from scheduler.sweeps import requeue_pending
from service.config import Config
from service.logs import configure_logging
from service.store import open_store


def main() -> None:
    """Schedule every sweep and block until interrupted."""
    config = Config.from_env()
    configure_logging(config.log_level)
    # APScheduler logs every run at INFO; the sweeps log what they changed.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # A platform stops processes with SIGTERM; leave the blocking loop as Ctrl-C would.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    store = open_store(config)
    broker = build_broker(connect_redis(config.redis_url))
    scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    scheduler.add_job(
        requeue_pending, "interval", seconds=config.sweep_interval_s, id="requeue_pending",
        args=(store, partial(enqueue_fetch, broker), timedelta(seconds=config.pending_requeue_after_s)),
    )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
