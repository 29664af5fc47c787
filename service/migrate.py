"""The release step: `python -m service.migrate` brings the stores up to this version.

It creates the job store's indexes, migrates earlier versions' jobs (those from before clients
become the client `public`'s), creates the `public` client, and forgets the records of sweeps
earlier clocks ran and this one does not.

It is idempotent, and runs before a new version's processes start: as Procfile's `release`
process, as compose's `migrate` service, and in `make run` before each process that uses the stores.
"""

from __future__ import annotations

import logging

from queueing.connection import connect_redis
from queueing.lease import forget_sweeps
from service.clients.store import ClientStore
from service.config import Config
from service.logs import configure_logging
from service.store import open_store

log = logging.getLogger(__name__)

#: Sweeps earlier versions' clocks ran: `indexes` became this command.
RETIRED_SWEEPS = ["indexes"]


def main() -> None:
    """Bring the job store up to this version, or fail (MongoDB down) so the release stops."""
    config = Config.from_env()
    configure_logging(config.log_level)
    store = open_store(config)
    store.migrate()
    ClientStore(store.collection.database, store.cipher).migrate()
    forget_sweeps(connect_redis(config.redis_url, config.redis_cluster), RETIRED_SWEEPS)
    log.info("job store migrated", extra={"database": store.collection.database.name})


if __name__ == "__main__":
    main()
