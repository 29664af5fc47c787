"""The vendor registry: which vendors exist, how to call them, and which one gets a new job."""

from __future__ import annotations

import itertools
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
WEBHOOK_AUTH_MODES = ("signature", "token", "none")

# The development registry: the two mock vendors on their default ports.
DEFAULT_REGISTRY_TOML = """
[vendors.sync]
mode = "sync"
url = "http://127.0.0.1:6001/fetch"
rate_limit = "600/minute"
timeout_s = 5
max_retries = 5

[vendors.async]
mode = "async"
url = "http://127.0.0.1:6002/fetch"
rate_limit = "600/minute"
timeout_s = 5
max_retries = 5
webhook_auth = "none"    # the original README's curl examples post unsigned webhooks
webhook_timeout_s = 300
"""


# Optional per-vendor settings (rate limiter, retries, circuit breaker, answer size), with their types.
LIMIT_SETTINGS = {
    "burst": int, "max_wait_s": float, "max_backlog": int, "breaker_failures": int, "breaker_cooldown_s": float,
    "retry_backoff_s": float, "retry_backoff_max_s": float, "max_body_bytes": int, "max_in_flight": int,
}


class RegistryError(Exception):
    """The vendor registry file is missing, unreadable or invalid."""


def parse_rate_limit(text: str) -> tuple[int, float]:
    """Parse `N/second|minute|hour|day` into (count, period in seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*", text)
    if not match or int(match.group(1)) < 1:
        raise RegistryError(f"rate_limit must look like '60/minute' (N/second|minute|hour|day), got {text!r}")
    return int(match.group(1)), float(PERIOD_SECONDS[match.group(2)])


def parse_rate_limits(text: str) -> tuple[tuple[int, float], ...]:
    """Parse one limit or several separated by commas (`10/second, 5000/hour`), one per period."""
    limits = tuple(parse_rate_limit(part) for part in text.split(","))
    if len({period for _, period in limits}) < len(limits):
        raise RegistryError(f"rate_limit names a period twice: {text!r}")
    return limits


@dataclass(frozen=True)
class Vendor:
    """One vendor's settings."""

    name: str
    mode: str
    url: str
    rate_limit: str = "60/minute"  # one limit or several: "10/second, 5000/hour, 20000/day"
    timeout_s: float = 5.0
    max_retries: int = 5
    enabled: bool = True
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_auth: str = "token"
    webhook_timeout_s: float = 300.0
    webhook_retries: int = 0
    max_wait_s: float = 3600.0  # how long a job may wait for this vendor before it fails
    max_backlog: int | None = None  # jobs waiting to start; default: what the vendor takes in max_wait_s
    breaker_failures: int = 5  # consecutive failures that open the circuit breaker; 0 disables it
    breaker_cooldown_s: float = 30.0
    retry_backoff_s: float = 1.0  # the first retry waits up to this; each further one up to twice as long
    retry_backoff_max_s: float = 300.0
    # Calls that may start at once; after them calls keep an even pace. Default: the smallest limit.
    burst: int | None = None
    max_body_bytes: int = 1024 * 1024  # the most of an answer read; a larger one fails the call
    max_in_flight: int | None = None  # calls in progress at once across all workers; default: no cap
    limits: tuple[tuple[int, float], ...] = field(init=False)  # (count, period in seconds) of each limit
    limit: tuple[int, float] = field(init=False)  # the one with the lowest rate: it sets the sustained pace

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", parse_rate_limits(self.rate_limit))
        object.__setattr__(self, "limit", min(self.limits, key=lambda limit: limit[0] / limit[1]))
        for name in LIMIT_SETTINGS:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_in_flight == 0:
            raise ValueError("max_in_flight must be at least 1")
        smallest = min(count for count, _ in self.limits)
        if self.burst is None:
            object.__setattr__(self, "burst", smallest)
        elif not 1 <= self.burst <= smallest:
            raise ValueError(f"burst must be between 1 and the smallest rate limit's {smallest}")
        count, period_s = self.limit
        if self.max_backlog is None:
            object.__setattr__(self, "max_backlog", max(1, int(self.max_wait_s * count / period_s)))

    @property
    def is_async(self) -> bool:
        return self.mode == "async"


class Registry:
    """The configured vendors, and the round-robin routing policy over the enabled ones."""

    def __init__(self, vendors: list[Vendor]) -> None:
        self.vendors = {vendor.name: vendor for vendor in vendors}
        self.enabled = [vendor for vendor in vendors if vendor.enabled]
        if not self.enabled:
            raise RegistryError("the vendor registry has no enabled vendor")
        self._rotation = itertools.cycle(self.enabled)
        self._lock = threading.Lock()

    def get(self, name: str) -> Vendor | None:
        """Return the vendor called `name`, or None."""
        return self.vendors.get(name)

    def choose(self) -> Vendor:
        """Pick the vendor for a new job: the next enabled one in turn."""
        with self._lock:
            return next(self._rotation)

    def others_after(self, vendor: Vendor) -> list[Vendor]:
        """Return the other enabled vendors in the order of the rotation, starting after `vendor`."""
        at = self.enabled.index(vendor)
        return self.enabled[at + 1:] + self.enabled[:at]

    def unsigned_webhook_vendors(self) -> list[str]:
        """Name the async vendors whose webhooks carry no authentication."""
        return [v.name for v in self.vendors.values() if v.is_async and v.webhook_auth == "none"]


def load_registry(path: str | None = None) -> Registry:
    """Load the registry from a TOML file, or the built-in development registry."""
    if path is None:
        return parse_registry(tomllib.loads(DEFAULT_REGISTRY_TOML), "built-in registry")
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RegistryError(f"cannot read vendor registry {path}: {error}") from error
    return parse_registry(data, path)


def parse_registry(data: dict, source: str) -> Registry:
    """Build a Registry from the parsed TOML, with errors that name the vendor and the field."""
    tables = data.get("vendors")
    if not isinstance(tables, dict) or not tables:
        raise RegistryError(f"{source}: expected at least one [vendors.NAME] table")
    return Registry([_vendor(name, table, source) for name, table in tables.items()])


def _vendor(name: str, table: dict, source: str) -> Vendor:
    where = f"{source}: vendors.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise RegistryError(f"{where}: a vendor name may hold only letters, digits, '-' and '_'")
    if table.get("mode") not in ("sync", "async"):
        raise RegistryError(f"{where}.mode must be 'sync' or 'async'")
    if not str(table.get("url", "")).startswith(("http://", "https://")):
        raise RegistryError(f"{where}.url must be an http(s) URL")
    secrets = table.get("webhook_secret", ())
    secrets = (secrets,) if isinstance(secrets, str) else tuple(secrets)
    if any(not secret.startswith("whsec_") for secret in secrets):
        raise RegistryError(f"{where}.webhook_secret must start with 'whsec_'")
    auth = table.get("webhook_auth", "signature" if secrets else "token")
    if auth not in WEBHOOK_AUTH_MODES:
        raise RegistryError(f"{where}.webhook_auth must be one of {', '.join(WEBHOOK_AUTH_MODES)}")
    if auth == "signature" and not secrets:
        raise RegistryError(f"{where}: webhook_auth 'signature' needs a webhook_secret")
    known = {"mode", "url", "rate_limit", "timeout_s", "max_retries", "enabled", "webhook_secret",
             "webhook_auth", "webhook_timeout_s", "webhook_retries", *LIMIT_SETTINGS}
    unknown = sorted(set(table) - known)
    if unknown:
        raise RegistryError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    try:
        return Vendor(
            name=name, mode=table["mode"], url=table["url"],
            rate_limit=str(table.get("rate_limit", Vendor.rate_limit)),
            timeout_s=float(table.get("timeout_s", Vendor.timeout_s)),
            max_retries=int(table.get("max_retries", Vendor.max_retries)),
            enabled=bool(table.get("enabled", True)),
            webhook_secrets=secrets, webhook_auth=auth,
            webhook_timeout_s=float(table.get("webhook_timeout_s", Vendor.webhook_timeout_s)),
            webhook_retries=int(table.get("webhook_retries", Vendor.webhook_retries)),
            **{name: kind(table[name]) for name, kind in LIMIT_SETTINGS.items() if name in table},
        )
    except (TypeError, ValueError) as error:
        raise RegistryError(f"{where}: {error}") from error
