"""The operator dashboard, served by the API under /dashboard when ADMIN_TOKEN is set."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import falcon

from queueing.breaker import CircuitBreaker
from queueing.broker import StreamsBroker
from queueing.messages import enqueue_fetch
from queueing.ratelimit import RateLimiter
from service.clients.store import ClientStore
from service.dashboard import resources
from service.dashboard.actions import OperatorActions
from service.dashboard.clients import ClientQueries
from service.dashboard.auth import PREFIX, OperatorAuth
from service.dashboard.queries import DashboardQueries
from service.store import JobStore
from vendors.registry import Registry

STATIC = Path(__file__).parent / "static"


def add_dashboard(
    app: falcon.App, admin_token: str, store: JobStore, registry: Registry, limiter: RateLimiter, broker: StreamsBroker,
    clients: ClientStore,
) -> None:
    """Add the dashboard's pages, JSON endpoints, actions and static files to the app."""
    auth = OperatorAuth(admin_token, broker.client)
    queries = DashboardQueries(store, registry, limiter, CircuitBreaker(broker.client), broker)
    shared = (auth, queries, OperatorActions(store, broker, partial(enqueue_fetch, broker)))
    for path, resource in (
        ("", resources.Page(auth, "overview", queries.overview)),
        ("/failures", resources.Failures(*shared)),
        ("/jobs/{request_id}", resources.JobPage(*shared)),
        ("/scheduler", resources.Page(auth, "scheduler", queries.scheduler)),
        ("/clients", resources.Page(auth, "clients", ClientQueries(store, clients, registry, limiter).overview)),
    ):
        app.add_route(f"{PREFIX}{path}", resource)
        app.add_route(f"{PREFIX}/api{path or '/overview'}", resource, suffix="data")
    app.add_route(f"{PREFIX}/api/throughput", resources.Throughput(*shared))
    app.add_route(f"{PREFIX}/failures/retry", resources.RetryFailures(*shared))
    app.add_route(f"{PREFIX}/dead-letters/purge", resources.PurgeDeadLetters(*shared))
    app.add_route(f"{PREFIX}/jobs", resources.JobLookup(*shared))
    app.add_route(f"{PREFIX}/jobs/{{request_id}}/retry", resources.RetryJob(*shared))
    app.add_route(f"{PREFIX}/jobs/{{request_id}}/callback", resources.ResendCallback(*shared))
    app.add_route(f"{PREFIX}/clients/revoke", resources.RevokeKey(auth, clients))
    app.add_route(f"{PREFIX}/login", resources.Login(auth))
    app.add_route(f"{PREFIX}/logout", resources.Logout(*shared))
    app.add_route(f"{PREFIX}/static/{{name}}", resources.StaticFiles(STATIC))
