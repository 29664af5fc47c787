"""Configure logging the same way in every process."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Log one line per event with time, level and logger name."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True,
    )
