"""The release step: `python -m service.migrate` creates the job store's indexes and migrates earlier versions' jobs.

It is idempotent, and runs before a new version's processes start: as Procfile's `release`
process, as compose's `migrate` service, and in `make run` before the rest.
"""

from __future__ import annotations

import logging

from service.config import Config
from service.logs import configure_logging
from service.store import open_store

log = logging.getLogger(__name__)


def main() -> None:
    """Bring the job store up to this version, or fail (MongoDB down) so the release stops."""
    config = Config.from_env()
    configure_logging(config.log_level)
    store = open_store(config)
    store.migrate()
    log.info("job store migrated", extra={"database": store.collection.database.name})


if __name__ == "__main__":
    main()
