"""Read the service's settings from the environment, once, with defaults for one machine."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from service.egress import Network, parse_networks
from vendors.payloads import MAX_JSON_DEPTH

DEFAULT_PII_KEYS = (
    "pii", "ssn", "password", "email", "phone", "card_number", "credit_card", "cc_number", "pan", "cvv",
)

#: A consumer refreshes its claims every quarter of the visibility timeout: it needs that long at least.
MIN_VISIBILITY_TIMEOUT_MS = 1_000

#: The lowest CPU priority a process can take (nice 19).
MAX_NICE = 19

# A guessable operator token would open the dashboard's actions to anyone who can reach the API.
MIN_ADMIN_TOKEN_LENGTH = 16


#: AUTH: `keys` asks every client for an API key; `open` takes a caller without one as the client `public`.
AUTH_MODES = ("keys", "open")


class ConfigError(Exception):
    """A required setting is missing or malformed."""


@dataclass(frozen=True)
class Config:
    """Settings shared by the web, worker and clock processes."""

    encryption_key: str = field(repr=False)
    callback_secret: str | None = field(default=None, repr=False)
    port: int = 4000
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL is then the seed (any one node) of a Redis/Valkey cluster.
    redis_cluster: bool = False
    # How many replicas must acknowledge each queue write before it counts as done (1 by default on a cluster).
    redis_wait_replicas: int = 0
    # How long workers and the clock ride out a Redis outage (a failover) before they give up a write.
    redis_outage_retry_s: float = 60.0
    mongodb_uri: str = "mongodb://127.0.0.1:27017/vendorfetch"
    # None leaves the server's default, the only one the embedded server knows; "majority" on a replica set.
    mongodb_write_concern: str | None = None
    mongodb_read_concern: str | None = None
    vendors_file: str | None = None
    public_url: str = "http://127.0.0.1:4000"
    log_level: str = "INFO"
    max_body_bytes: int = 64 * 1024
    pii_keys: tuple[str, ...] = DEFAULT_PII_KEYS
    store_timeout_ms: int = 2_000
    retention_days: float = 7.0
    orphan_after_s: float = 60.0
    sweep_interval_s: float = 15.0
    clock_lease_s: float = 15.0
    # The least slack added to every rate-limit period; the delays workers measure raise it.
    rate_limit_margin_ms: int = 10
    # The operator dashboard's token; None turns the dashboard off.
    admin_token: str | None = field(default=None, repr=False)
    # Keep the encrypted payload of failed and timed-out jobs until retention, so operators can retry them.
    keep_failed_payloads: bool = False
    # Request bodies whose objects and lists nest deeper than this are refused.
    max_json_depth: int = MAX_JSON_DEPTH
    # How long a message held by a worker that died waits before another worker takes it.
    visibility_timeout_ms: int = 60_000
    # Networks client callbacks may reach besides public addresses (service/egress.py).
    callback_allow_networks: tuple[Network, ...] = ()
    # How the API tells its clients apart: API keys, or (for development) anyone as `public`.
    auth: str = "keys"
    # The worker processes' nice value: on a host they share with the API, the API comes first.
    worker_nice: int = 10

    @property
    def open_access(self) -> bool:
        return self.auth == "open"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Build the settings from environment variables; fail early on a missing key."""
        env = os.environ if environ is None else environ
        key = env.get("ENCRYPTION_KEY", "").strip()
        if not key:
            raise ConfigError(
                "ENCRYPTION_KEY is not set; generate one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            )
        port = _int(env, "PORT", 4000)
        cluster = _flag(env, "REDIS_CLUSTER")
        return cls(
            encryption_key=key,
            callback_secret=_callback_secret(env),
            port=port,
            redis_url=env.get("REDIS_URL") or cls.redis_url,
            redis_cluster=cluster,
            redis_wait_replicas=_at_least_zero(env, "REDIS_WAIT_REPLICAS", 1 if cluster else 0),
            redis_outage_retry_s=_float(env, "REDIS_OUTAGE_RETRY_S", cls.redis_outage_retry_s),
            mongodb_uri=env.get("MONGODB_URI") or cls.mongodb_uri,
            mongodb_write_concern=env.get("MONGODB_WRITE_CONCERN", "").strip() or None,
            mongodb_read_concern=env.get("MONGODB_READ_CONCERN", "").strip() or None,
            vendors_file=env.get("VENDORS_FILE") or None,
            public_url=(env.get("PUBLIC_URL") or f"http://127.0.0.1:{port}").rstrip("/"),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes),
            pii_keys=_list(env, "PII_KEYS", DEFAULT_PII_KEYS),
            store_timeout_ms=_int(env, "STORE_TIMEOUT_MS", cls.store_timeout_ms),
            retention_days=_float(env, "JOB_RETENTION_DAYS", cls.retention_days),
            orphan_after_s=_float(env, "ORPHAN_AFTER_S", cls.orphan_after_s),
            sweep_interval_s=_float(env, "SWEEP_INTERVAL_S", cls.sweep_interval_s),
            clock_lease_s=_float(env, "CLOCK_LEASE_S", cls.clock_lease_s),
            rate_limit_margin_ms=_int(env, "RATE_LIMIT_MARGIN_MS", cls.rate_limit_margin_ms),
            admin_token=_admin_token(env),
            keep_failed_payloads=_flag(env, "KEEP_FAILED_PAYLOADS"),
            max_json_depth=_int(env, "MAX_JSON_DEPTH", cls.max_json_depth),
            callback_allow_networks=_networks(env, "CALLBACK_ALLOW_NETWORKS"),
            visibility_timeout_ms=_visibility_timeout_ms(env),
            auth=_auth(env),
            worker_nice=_worker_nice(env),
        )


def _callback_secret(env) -> str | None:
    secret = env.get("CALLBACK_SECRET", "").strip() or None
    if secret is not None and not secret.startswith("whsec_"):
        raise ConfigError("CALLBACK_SECRET must be a Standard Webhooks secret starting with 'whsec_'")
    return secret


def _auth(env) -> str:
    mode = env.get("AUTH", "").strip().lower() or "keys"
    if mode not in AUTH_MODES:
        raise ConfigError(f"AUTH must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    return mode


def _admin_token(env) -> str | None:
    token = env.get("ADMIN_TOKEN", "").strip() or None
    if token is not None and len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigError(f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters; generate one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def _networks(env, name: str) -> tuple[Network, ...]:
    try:
        return parse_networks(env.get(name, ""))
    except ValueError as error:
        raise ConfigError(f"{name} must list networks like 10.0.0.0/8,::1/128: {error}") from None


def _visibility_timeout_ms(env) -> int:
    value = _int(env, "VISIBILITY_TIMEOUT_MS", Config.visibility_timeout_ms)
    if value < MIN_VISIBILITY_TIMEOUT_MS:  # shorter, and live workers would take each other's messages
        raise ConfigError(f"VISIBILITY_TIMEOUT_MS must be at least {MIN_VISIBILITY_TIMEOUT_MS}, got {value}")
    return value


def _worker_nice(env) -> int:
    value = _int(env, "WORKER_NICE", Config.worker_nice)
    if not 0 <= value <= MAX_NICE:
        raise ConfigError(f"WORKER_NICE must be from 0 to {MAX_NICE}, got {value}")
    return value


def _at_least_zero(env, name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    return value


def _flag(env, name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true", "yes")


def _int(env, name: str, default: int) -> int:
    return int(_float(env, name, default))


def _float(env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _list(env, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())
