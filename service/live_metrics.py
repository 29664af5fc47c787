"""Read live state from Redis for /metrics: each queue's counts and each vendor's breaker."""

from __future__ import annotations

import logging

import redis

from queueing.breaker import CircuitBreaker
from queueing.broker import StreamsBroker
from service.metrics import gauge
from vendors.registry import Registry

log = logging.getLogger(__name__)


class QueueCollector:
    """A Prometheus collector asking the broker for its queues' counts at scrape time."""

    def __init__(self, broker: StreamsBroker, queues: list[str]) -> None:
        self.broker = broker
        self.queues = queues

    def collect(self):
        try:
            stats = {queue: self.broker.queue_stats(queue) for queue in self.queues}
        except redis.RedisError as error:
            log.warning("queue metrics unavailable: %s", type(error).__name__)
            return
        for name, documentation in (
            ("depth", "Messages in the stream, delivered or not (acknowledged ones are deleted)"),
            ("pending", "Messages delivered to a consumer and not yet acknowledged"),
            ("delayed", "Messages waiting in the delay set (retries, deferrals)"),
            ("dead_letters", "Messages in the dead-letter stream"),
        ):
            samples = {(queue,): values[name] for queue, values in stats.items()}
            yield gauge(f"vendorfetch_queue_{name}", documentation, ["queue"], samples)


class BreakerCollector:
    """A Prometheus collector reporting which vendors' circuit breakers are open."""

    def __init__(self, breaker: CircuitBreaker, registry: Registry) -> None:
        self.breaker = breaker
        self.registry = registry

    def collect(self):
        try:
            samples = {(name,): float(self.breaker.tripped(vendor)) for name, vendor in self.registry.vendors.items()}
        except redis.RedisError as error:
            log.warning("breaker metrics unavailable: %s", type(error).__name__)
            return
        yield gauge("vendorfetch_breaker_open", "1 while the vendor's circuit breaker is open or half-open", ["vendor"], samples)
