"""The Falcon app factory: build the parts, add the routes, map errors to HTTP."""

from __future__ import annotations

import logging
import math

import falcon
import orjson
import pymongo.errors
from dramatiq.errors import ConnectionClosed

from queueing.breaker import CircuitBreaker
from queueing.connection import build_broker, connect_redis
from queueing.messages import CALLBACK_QUEUE, QUEUE_NAME
from queueing.outages import OUTAGE_ERRORS
from queueing.ratelimit import RateLimiter
from service import errors
from service.cleaning import Cleaner
from service.clients.auth import ClientAuth
from service.clients.limits import RequestLimits
from service.clients.store import ClientStore
from service.config import Config
from service.dashboard import add_dashboard
from service.egress import EgressPolicy
from service.health import Liveness, Readiness
from service.idempotency import IdempotencyKeys
from service.intake import Intake
from service.jobs import Jobs
from service.live_metrics import BreakerCollector, QueueCollector
from service.logs import configure_logging
from service.metrics import WEBHOOKS
from service.middleware import BodyLimit
from service.observability import Metrics, RequestMetrics
from service.openapi import OpenAPIDocument, build_spec
from service.outcomes import Outcomes
from service.resources import JobCancel, JobCollection, JobItem, VendorWebhook
from service.store import open_store
from service.waiting import Waiting
from service.webhooks import WEBHOOK_ROUTE, WebhookAuth
from vendors.registry import load_registry

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
OPEN_ACCESS_WARNING = "AUTH=open: every request without an API key is taken as the client 'public'"
ROUTES = ", ".join(f"{method.upper()} {path}" for path, operations in build_spec([], callbacks=False)["paths"].items() for method in operations)


def create_app(config: Config | None = None) -> falcon.App:
    """Build the WSGI app; with no config, read it from the environment."""
    config = config or Config.from_env()
    configure_logging(config.log_level)
    registry = load_registry(config.vendors_file)
    store = open_store(config)
    redis_client = connect_redis(config.redis_url, config.redis_cluster)
    # No riding out an outage here: a client waits for its answer, and a job left pending is the clock's.
    broker = build_broker(redis_client, wait_replicas=config.redis_wait_replicas)
    outcomes = Outcomes(store, broker if config.callback_secret else None)
    waiting = Waiting(RateLimiter(redis_client, config.rate_limit_margin_ms), registry, broker)
    clients = ClientStore(store.collection.database, store.cipher)
    jobs = Jobs(
        store, outcomes, registry, Intake(store, registry, waiting, broker), Cleaner(config.pii_keys), waiting,
        IdempotencyKeys(redis_client, config.encryption_key),
    )
    for name in registry.unsigned_webhook_vendors():
        log.warning("vendor %r accepts unauthenticated webhooks (webhook_auth = none)", name)
    if config.open_access:
        log.warning(OPEN_ACCESS_WARNING)

    app = falcon.App(middleware=[
        RequestMetrics(), BodyLimit(config.max_body_bytes),
        ClientAuth(clients, RequestLimits(redis_client), open_access=config.open_access),
    ])
    app.req_options.keep_blank_qs_values = True  # `?vendor=` names no vendor: a 400, not the default route
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json_handler})
    callbacks = config.callback_secret is not None
    egress = EgressPolicy(config.callback_allow_networks) if callbacks else None
    app.add_route("/jobs", JobCollection(jobs, callbacks=egress, max_json_depth=config.max_json_depth))
    app.add_route("/jobs/{request_id}", JobItem(jobs))
    app.add_route("/jobs/{request_id}/cancel", JobCancel(jobs))
    app.add_route(WEBHOOK_ROUTE, VendorWebhook(jobs, WebhookAuth(config.encryption_key, redis_client), config.max_json_depth))
    app.add_route("/healthz", Liveness())
    app.add_route("/readyz", Readiness(store, redis_client, registry, [OPEN_ACCESS_WARNING] if config.open_access else []))
    app.add_route("/openapi.json", OpenAPIDocument(build_spec(list(registry.vendors), callbacks)))
    app.add_route("/metrics", Metrics(
        QueueCollector(broker, [QUEUE_NAME, CALLBACK_QUEUE]), BreakerCollector(CircuitBreaker(redis_client), registry),
    ))
    if config.admin_token:  # without a token the dashboard is off: its paths are unknown routes (404)
        add_dashboard(app, config.admin_token, store, registry, waiting.limiter, broker, clients)
    app.add_sink(unknown_route)
    add_error_handlers(app)
    return app


def unknown_route(req: falcon.Request, resp: falcon.Response) -> None:
    raise falcon.HTTPNotFound(description=f"no route for {req.method} {req.path}; the API has {ROUTES}")


def add_error_handlers(app: falcon.App) -> None:
    """Map the service's errors and data-store outages to HTTP answers."""

    def job_not_found(req, resp, error, params):
        raise falcon.HTTPNotFound(title="Job not found", description=f"no job has request_id {error.args[0]!r}")

    def webhook_rejected(req, resp, error, params):
        WEBHOOKS.labels(params.get("vendor", ""), type(error).__name__).inc()
        raise falcon.HTTPError(error.status, title="Webhook rejected", description=str(error))

    def unknown_vendor(req, resp, error, params):
        if req.path.startswith("/jobs"):
            raise falcon.HTTPBadRequest(title="Unknown vendor", description=str(error))
        raise falcon.HTTPNotFound(title="Unknown vendor", description=str(error))

    def idempotency_conflict(req, resp, error, params):
        raise falcon.HTTPUnprocessableEntity(title="Idempotency-Key reused", description=str(error))

    def unstorable(req, resp, error, params):
        raise falcon.HTTPUnprocessableEntity(title="Unstorable data", description=str(error))

    def idempotency_in_flight(req, resp, error, params):
        raise falcon.HTTPConflict(title="Idempotency-Key in use", description=str(error))

    def backlog_full(req, resp, error, params):
        raise falcon.HTTPServiceUnavailable(
            title="Backlog full", description=str(error), retry_after=max(1, math.ceil(error.retry_after_s)),
        )

    def client_backlog_full(req, resp, error, params):
        raise falcon.HTTPTooManyRequests(
            title="Your backlog is full", description=str(error), retry_after=max(1, math.ceil(error.retry_after_s)),
        )

    def unauthenticated(req, resp, error, params):
        raise falcon.HTTPUnauthorized(title="API key required", description=str(error), challenges=["Bearer"])

    def too_many_requests(req, resp, error, params):
        raise falcon.HTTPTooManyRequests(
            title="Too many requests", description=str(error), retry_after=error.retry_after_s, headers=error.headers,
        )

    def job_finished(req, resp, error, params):
        raise falcon.HTTPConflict(title="Job already finished", description=str(error))

    def unavailable(req, resp, error, params):
        which = "MongoDB" if isinstance(error, pymongo.errors.PyMongoError) else "Redis"
        log.warning("%s unavailable during %s %s: %s", which, req.method, req.path, type(error).__name__)
        raise falcon.HTTPServiceUnavailable(
            description=f"the data store ({which}) is unavailable; try again shortly", retry_after=RETRY_AFTER_S,
        )

    def internal_error(req, resp, error, params):
        # The path alone: a webhook's query string carries its job's token.
        log.error("unhandled error during %s %s", req.method, req.path, exc_info=error)
        raise falcon.HTTPInternalServerError(description="the service could not handle this request; the error is logged")

    app.add_error_handler(Exception, internal_error)
    app.add_error_handler(errors.JobNotFound, job_not_found)
    app.add_error_handler(errors.UnknownVendor, unknown_vendor)
    app.add_error_handler(errors.IdempotencyConflict, idempotency_conflict)
    app.add_error_handler(errors.IdempotencyInFlight, idempotency_in_flight)
    app.add_error_handler(errors.UnstorableResult, unstorable)
    app.add_error_handler(errors.BacklogFull, backlog_full)
    app.add_error_handler(errors.ClientBacklogFull, client_backlog_full)
    app.add_error_handler(errors.Unauthenticated, unauthenticated)
    app.add_error_handler(errors.TooManyRequests, too_many_requests)
    app.add_error_handler(errors.JobFinished, job_finished)
    app.add_error_handler(errors.WebhookRejected, webhook_rejected)
    app.add_error_handler(pymongo.errors.ConnectionFailure, unavailable)
    app.add_error_handler(ConnectionClosed, unavailable)
    for outage in OUTAGE_ERRORS:  # a node down, or a cluster failing over
        app.add_error_handler(outage, unavailable)
