"""Read what a vendor says is left of its rate limit: `X-RateLimit-*` or the IETF `RateLimit` fields."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

# A reset above this is a Unix time (GitHub style), below it a number of seconds from now.
EPOCH_THRESHOLD_S = 1_000_000_000


@dataclass(frozen=True)
class Quota:
    """The vendor allows `remaining` more requests until `reset_s` seconds from now."""

    remaining: int
    reset_s: float


def parse_quota(headers: Mapping[str, str], now: float | None = None) -> Quota | None:
    """Return the stricter quota the headers announce, or None when they announce none."""
    quotas = [*_structured(headers.get("RateLimit", "")), *_pair(headers, now)]
    return min(quotas, key=lambda quota: (quota.remaining, -quota.reset_s), default=None)


def _structured(field: str) -> list[Quota]:
    """Read `RateLimit: "policy";r=10;t=30, ...` (draft-ietf-httpapi-ratelimit-headers-08 and later)."""
    quotas = []
    for item in field.split(","):
        params = dict(re.findall(r";\s*([rt])\s*=\s*(\d+)", item))
        if "r" in params and "t" in params:
            quotas.append(Quota(int(params["r"]), float(params["t"])))
    return quotas


def _pair(headers: Mapping[str, str], now: float | None) -> list[Quota]:
    """Read `X-RateLimit-Remaining`/`-Reset` or the earlier drafts' `RateLimit-Remaining`/`-Reset`."""
    for prefix in ("X-RateLimit-", "RateLimit-"):
        remaining, reset = headers.get(prefix + "Remaining"), headers.get(prefix + "Reset")
        if remaining is None or reset is None:
            continue
        try:
            remaining_count, reset_s = int(remaining.strip()), float(reset.strip())
        except ValueError:
            continue
        if reset_s > EPOCH_THRESHOLD_S:
            reset_s -= time.time() if now is None else now
        return [Quota(max(remaining_count, 0), max(reset_s, 0.0))]
    return []
