"""The worker process: `dramatiq actors.worker` builds the broker and registers the actor."""

from __future__ import annotations

import logging

import dramatiq
import requests

from actors.breaker import CircuitBreaker
from actors.callbacks import declare_callback_actor, notify_on_finish
from actors.deferral import VendorGate
from actors.feedback import VendorFeedback
from actors.fetch import declare_fetch_actor
from actors.queue import FETCH_ACTOR
from actors.ratelimit import RateLimiter
from actors.runner import JobRunner
from actors.setup import build_broker, connect_redis
from service.cleaning import Cleaner
from service.config import Config
from service.logs import configure_logging
from service.store import JobStore, open_store
from service.webhooks import WebhookAuth
from vendors.registry import load_registry

log = logging.getLogger(__name__)


def fail_dead_letter(store: JobStore, message: dramatiq.Message, reason: str) -> None:
    """Mark the job of a dead-lettered fetch message failed; the broker's reason goes to its history."""
    if message.actor_name == FETCH_ACTOR and message.args:
        store.fail_for_message(
            message.args[0], message.message_id, "the job could not be processed (its message was dead-lettered)",
            detail=f"dead-lettered: {reason}",
        )


def setup_worker(config: Config) -> dramatiq.Broker:
    """Build the broker, set it as dramatiq's global broker, and register the fetch actor."""
    configure_logging(config.log_level)
    store = open_store(config)
    redis_client = connect_redis(config.redis_url)
    broker = build_broker(redis_client, on_dead_letter=lambda message, reason: fail_dead_letter(store, message, reason))
    dramatiq.set_broker(broker)
    registry = load_registry(config.vendors_file)
    limiter, breaker = RateLimiter(redis_client, config.rate_limit_margin_ms), CircuitBreaker(redis_client)
    broker.add_middleware(VendorGate(registry, limiter, breaker, store))
    runner = JobRunner(
        store, registry, requests.Session(),
        WebhookAuth(config.encryption_key, redis_client), config.public_url, Cleaner(config.pii_keys),
        VendorFeedback(limiter, breaker),
    )
    declare_fetch_actor(broker, runner)
    if config.callback_secret:
        declare_callback_actor(broker, store, requests.Session(), config.callback_secret)
        notify_on_finish(store, broker, config.callback_secret)
    return broker


broker = setup_worker(Config.from_env())
