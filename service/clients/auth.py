"""Name the client of each request to the client API from its `Authorization: Bearer` key.

Verified keys are remembered in each process for KEY_CACHE_S, so that a busy client costs one
MongoDB read per key every few seconds, not one per request: a revoked key, or a client's
changed settings, take effect within KEY_CACHE_S.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import falcon

from service.clients.limits import RequestLimits
from service.clients.store import KEY_PREFIX, Client, ClientError, ClientStore, digest
from service.errors import Unauthenticated
from service.store import PUBLIC_CLIENT

KEY_CACHE_S = 5.0
#: Past this many remembered clients the oldest is forgotten first.
MAX_CACHED_KEYS = 10_000
#: What service/clients/store.py's new_key makes: anything else is refused without a lookup.
WELL_FORMED_KEY = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")


class ClientAuth:
    """Falcon middleware: set `req.context.client` for resources marked `for_clients`, and hold each client to its rate.

    With `open_access` (AUTH=open) a request without a key is the client `public`; a key that
    is given must be valid either way.
    """

    def __init__(self, clients: ClientStore, limits: RequestLimits, *, open_access: bool) -> None:
        self.clients = clients
        self.limits = limits
        self.open_access = open_access
        self._cache: dict[str, tuple[float, Client | None]] = {}

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        if not getattr(resource, "for_clients", False):
            return
        req.context.client = self.client_of(req.get_header("Authorization"))
        self.limits.check(req.context.client, resp)

    def client_of(self, authorization: str | None) -> Client:
        """Return the client an Authorization header names, or raise Unauthenticated."""
        if authorization is None:
            if self.open_access:
                return self._remembered(f"client:{PUBLIC_CLIENT}", self._public)
            raise Unauthenticated(f"send an API key: Authorization: Bearer {KEY_PREFIX}...")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX):
            raise Unauthenticated(f"the Authorization header must be Bearer and an API key starting {KEY_PREFIX}")
        if not WELL_FORMED_KEY.fullmatch(key):
            raise Unauthenticated("the API key is unknown or revoked")
        client = self._remembered(digest(key), lambda: self.clients.by_key(key))
        if client is None:
            raise Unauthenticated("the API key is unknown or revoked")
        return client

    def _public(self) -> Client:
        try:
            return self.clients.get(PUBLIC_CLIENT)
        except ClientError:  # not migrated yet: as the migration makes it
            return Client(PUBLIC_CLIENT, rate_per_s=None)

    def _remembered(self, name: str, load: Callable[[], Client | None]) -> Client | None:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        client = load()
        if client is None:  # unknown keys are not remembered: they cannot push out the known ones
            return None
        self._cache.pop(name, None)
        if len(self._cache) >= MAX_CACHED_KEYS:
            del self._cache[next(iter(self._cache))]  # the oldest remembered
        self._cache[name] = (now + KEY_CACHE_S, client)
        return client
