"""Log one JSON line per event, the same way in the web, worker and clock processes.

Events carry their facts as `extra` fields (request_id, vendor, state, duration_ms, ...). Never
pass a job's payload or a secret: nothing here filters them out.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from pythonjsonlogger.orjson import OrjsonFormatter

# The job the current thread (or greenlet) is handling, as fields for each record it logs.
_current_job: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("current_job", default={})


@contextlib.contextmanager
def about_job(request_id: str, vendor: str | None) -> Iterator[None]:
    """Tag every record logged inside the block, here and in what it calls, with the job and its vendor."""
    token = _current_job.set({"request_id": request_id, **({"vendor": vendor} if vendor else {})})
    try:
        yield
    finally:
        _current_job.reset(token)


class CurrentJobFields(logging.Filter):
    """Give a record the current job's fields it lacks, unless it is about another job."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _current_job.get()
        if job and getattr(record, "request_id", job["request_id"]) == job["request_id"]:
            for name, value in job.items():
                record.__dict__.setdefault(name, value)
        return True


def json_formatter() -> OrjsonFormatter:
    """Build the formatter: time, level, logger, process, message, then the event's own fields.

    orjson encodes a line faster than the standard library, and every job logs a few.
    """
    return OrjsonFormatter(
        "%(levelname)s %(name)s %(process)d %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",
    )


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON lines."""
    # The lines name no source line, thread or multiprocessing name, so records need not collect
    # them (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    handler.addFilter(CurrentJobFields())
    logging.basicConfig(level=level, handlers=[handler], force=True)
