"""Health resources: is the process alive, and can it do its work right now."""

from __future__ import annotations

import falcon
import pymongo.errors
import redis

from service.store import JobStore
from vendors.registry import Registry


class Liveness:
    """GET /healthz: the process answers; nothing else is checked."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Readiness:
    """GET /readyz: Redis and MongoDB answer and the vendor registry is loaded; 503 otherwise."""

    def __init__(self, store: JobStore, redis_client: redis.Redis, registry: Registry, warnings: list[str]) -> None:
        self.store = store
        self.redis_client = redis_client
        self.registry = registry
        self.warnings = warnings  # the configuration's, such as open access

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = {"mongodb": self._check_mongodb(), "redis": self._check_redis(), "vendors": sorted(self.registry.vendors)}
        ready = checks["mongodb"] == "ok" and checks["redis"] == "ok"
        warnings = [*self.warnings, *(
            f"vendor {name!r} accepts unauthenticated webhooks (webhook_auth = none)"
            for name in self.registry.unsigned_webhook_vendors()
        )]
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "unavailable", "checks": checks, "warnings": warnings}

    def _check_mongodb(self) -> str:
        try:
            self.store.collection.database.command("ping")
            return "ok"
        except pymongo.errors.PyMongoError as error:
            return f"unavailable: {type(error).__name__}"

    def _check_redis(self) -> str:
        try:
            self.redis_client.ping()
            return "ok"
        except redis.RedisError as error:
            return f"unavailable: {type(error).__name__}"
