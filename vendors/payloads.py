"""Bounds on the JSON that crosses the service's edges, so that none can exhaust a process or a store."""

from __future__ import annotations

from typing import Any

#: Objects and lists may nest this deep in a request body or a vendor's answer; MongoDB stores at
#: most 100 levels, and a job keeps its result two levels down.
MAX_JSON_DEPTH = 32


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Tell whether objects and lists nest more than `limit` levels deep in `value` (iteratively: no recursion limit)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False
