"""The worker process: `dramatiq actors.worker` builds the broker and registers the actor."""

from __future__ import annotations

import logging

import dramatiq

from actors.callbacks import declare_callback_actor
from actors.deferral import VendorGate
from actors.feedback import VendorFeedback
from actors.fetch import declare_fetch_actor
from actors.priority import lower_priority
from actors.runner import JobRunner
from queueing.breaker import CircuitBreaker
from queueing.connection import build_broker, connect_redis
from queueing.messages import request_id_of
from queueing.ratelimit import RateLimiter
from service.cleaning import Cleaner
from service.clients.store import ClientStore
from service.config import Config
from service.egress import EgressPolicy
from service.logs import configure_logging
from service.outcomes import Outcomes
from service.states import JobStatus
from service.store import JobStore, open_store
from service.webhooks import WebhookAuth
from vendors.client import vendor_session
from vendors.registry import load_registry

log = logging.getLogger(__name__)


def fail_dead_letter(store: JobStore, outcomes: Outcomes, message: dramatiq.Message, reason: str) -> None:
    """Mark the job of a dead-lettered fetch message failed; the broker's reason goes to its history."""
    request_id = request_id_of(message)
    error, detail = "the job could not be processed (its message was dead-lettered)", f"dead-lettered: {reason}"
    if request_id and store.fail(request_id, message.message_id, error, detail=detail):
        outcomes.finished(request_id, JobStatus.FAILED, detail=detail)


def setup_worker(config: Config) -> dramatiq.Broker:
    """Build the broker, set it as dramatiq's global broker, and register the fetch actor."""
    configure_logging(config.log_level)
    lower_priority(config.worker_nice)
    store = open_store(config)
    redis_client = connect_redis(config.redis_url, config.redis_cluster)
    # The broker reports dead letters to `outcomes`, which queues client callbacks through the broker.
    broker = build_broker(
        redis_client, on_dead_letter=lambda message, reason: fail_dead_letter(store, outcomes, message, reason),
        visibility_timeout_ms=config.visibility_timeout_ms, wait_replicas=config.redis_wait_replicas,
        outage_retry_s=config.redis_outage_retry_s,
    )
    outcomes = Outcomes(store, broker if config.callback_secret else None)
    dramatiq.set_broker(broker)
    registry = load_registry(config.vendors_file)
    limiter, breaker = RateLimiter(redis_client, config.rate_limit_margin_ms), CircuitBreaker(redis_client)
    broker.add_middleware(VendorGate(registry, limiter, breaker, store, outcomes))
    runner = JobRunner(
        store, outcomes, registry, vendor_session(),
        WebhookAuth(config.encryption_key, redis_client), config.public_url, Cleaner(config.pii_keys),
        VendorFeedback(limiter, breaker),
    )
    declare_fetch_actor(broker, runner)
    if config.callback_secret:
        declare_callback_actor(
            broker, store, EgressPolicy(config.callback_allow_networks), ClientStore(store.collection.database, store.cipher),
            config.callback_secret,
        )
    return broker


broker = setup_worker(Config.from_env())
