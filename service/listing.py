"""A client's list of its jobs: the query's parameters, checked, and the opaque cursor between pages."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import falcon
import orjson

from service.states import JobStatus

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LAST_CURSOR_TIME = datetime(9999, 1, 1, tzinfo=timezone.utc)
PARAMETERS = ("status", "vendor", "created_after", "created_before", "limit", "starting_after")


@dataclass(frozen=True)
class ListQuery:
    """Which of its jobs a client asks for, and from where."""

    status: str | None = None
    vendor: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = DEFAULT_LIMIT
    starting_after: tuple[datetime, str] | None = None


def bad(name: str, description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title=f"Invalid {name}", description=description)


def read_list_query(req: falcon.Request, vendor_names: list[str]) -> ListQuery:
    """Return the list's parameters from the query string, or raise 400 naming the one that is wrong."""
    unknown = sorted(set(req.params) - set(PARAMETERS))
    if unknown:
        raise bad(unknown[0], f"unknown parameter {unknown[0]!r}; a list takes {', '.join(PARAMETERS)}")
    status, vendor = req.get_param("status"), req.get_param("vendor")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise bad("status", f"status must be one of {', '.join(s.value for s in JobStatus)}")
    if vendor is not None and vendor not in vendor_names:
        raise bad("vendor", f"no vendor is called {vendor!r}; known vendors: {', '.join(sorted(vendor_names))}")
    limit = req.get_param("limit")
    if limit is not None and not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
        raise bad("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    cursor = req.get_param("starting_after")
    return ListQuery(
        status, vendor, read_time(req, "created_after"), read_time(req, "created_before"),
        DEFAULT_LIMIT if limit is None else int(limit), None if cursor is None else decode_cursor(cursor),
    )


def read_time(req: falcon.Request, name: str) -> datetime | None:
    """Return an ISO 8601 time parameter (UTC unless it names its zone), or raise 400."""
    raw = req.get_param(name)
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw)
        # In UTC, as stored: a time at the edge of the calendar that UTC cannot hold is refused here.
        return when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise bad(name, f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z") from None


def encode_cursor(position: tuple[datetime, str]) -> str:
    """Return the opaque cursor of a position in a client's list: a job's creation time and request_id."""
    created_at, request_id = position
    return base64.urlsafe_b64encode(orjson.dumps([(created_at - EPOCH) // timedelta(milliseconds=1), request_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Return the position an opaque cursor names, or raise 400."""
    try:
        created_ms, request_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(created_ms, int) or not isinstance(request_id, str):
            raise ValueError(cursor)
        created_at = EPOCH + timedelta(milliseconds=created_ms)
        if created_at >= LAST_CURSOR_TIME:  # no job is that new, and the page after it could not be dated
            raise ValueError(cursor)
        return created_at, request_id
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise bad("starting_after", "starting_after must be the next_cursor of an earlier page, unchanged") from None
