"""Log one JSON line per event, the same way in the web, worker and clock processes.

Events carry their facts as `extra` fields (request_id, vendor, state, duration_ms, ...). Never
pass a job's payload or a secret: nothing here filters them out.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter


def json_formatter() -> JsonFormatter:
    """Build the formatter: time, level, logger, process, message, then the event's own fields."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(process)d %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",
    )


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
