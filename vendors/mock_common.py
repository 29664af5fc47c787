"""Behaviour shared by the mock vendors: rate limit, latency, injected failures, stats, runner.

A mock vendor is a stand-in for a third-party API in development and tests. Each one runs in a
single process, because its sliding window and counters live in memory.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import falcon
import orjson
from gunicorn.app.base import BaseApplication

from vendors.registry import RegistryError, parse_rate_limits

STAT_NAMES = ("served", "refused", "failed")


def rate_limit_arg(text: str) -> tuple[tuple[int, float], ...]:
    """Parse one limit or several (`N/second|minute|hour|day`, comma-separated) as the vendor registry does."""
    try:
        return parse_rate_limits(text)
    except RegistryError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def parse_latency_ms(text: str) -> tuple[float, float]:
    """Parse a fixed latency `100` or a random range `50-200` (milliseconds) into (low, high)."""
    low_text, _, high_text = text.strip().partition("-")
    low = float(low_text)
    high = float(high_text) if high_text else low
    if low < 0 or high < low:
        raise ValueError(f"latency must be MS or LOW-HIGH with 0 <= LOW <= HIGH, not {text!r}")
    return low, high


def parse_fraction(text: str) -> float:
    """Parse a rate between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, not {text!r}")
    return value


@dataclass(frozen=True)
class MockSettings:
    """How a mock vendor listens and misbehaves."""

    host: str = "127.0.0.1"
    port: int = 6001
    rate_limit: tuple[tuple[int, float], ...] = ((600, 60.0),)  # every one enforced
    latency_ms: tuple[float, float] = (0.0, 0.0)
    failure_rate: float = 0.0
    timeout_rate: float = 0.0
    hang_s: float = 30.0
    threads: int = 16
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.failure_rate + self.timeout_rate > 1.0:
            raise ValueError("failure rate plus timeout rate must not exceed 1")


class SlidingWindowLimiter:
    """Admit at most `limit` requests in any window of `period_s` seconds, exactly."""

    def __init__(self, limit: int, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.period_s = period_s
        self.max_in_window = 0
        self._clock = clock
        self._accepted: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """Admit one request and return None, or return the whole seconds until one would be."""
        with self._lock:
            retry_after_s = self.retry_after_s()
            if retry_after_s is None:
                self.record()
            return retry_after_s

    def retry_after_s(self) -> int | None:
        """Return None if a request now fits the window, else the whole seconds until one would."""
        now = self._clock()
        while self._accepted and self._accepted[0] <= now - self.period_s:
            self._accepted.popleft()
        if len(self._accepted) >= self.limit:
            return max(1, math.ceil(self._accepted[0] + self.period_s - now))
        return None

    def record(self) -> None:
        """Count a request admitted now."""
        self._accepted.append(self._clock())
        self.max_in_window = max(self.max_in_window, len(self._accepted))

    def reset(self) -> None:
        """Forget every accepted request, as a freshly started vendor would."""
        with self._lock:
            self._accepted.clear()
            self.max_in_window = 0


class Stats:
    """Thread-safe named counters."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._counts = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def incr(self, name: str) -> None:
        """Add one to a counter."""
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        """Return a copy of the counters."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)


class MockVendor:
    """Apply a mock's rate limit, latency and injected failures, and count the outcomes."""

    def __init__(self, settings: MockSettings, extra_stats: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.stats = Stats(STAT_NAMES + extra_stats)
        self.limiters = [SlidingWindowLimiter(*limit, clock=clock) for limit in settings.rate_limit]
        self._sleep = sleep
        self._random = random.Random(settings.seed)
        self._in_progress = self.max_in_progress = 0
        self._progress_lock = threading.Lock()

    def admit(self) -> None:
        """Let a request through, or raise the 429, 503 or 504 it must get."""
        with self._progress_lock:  # a request refused by one limit counts against none
            for limiter, (count, period_s) in zip(self.limiters, self.settings.rate_limit):
                retry_after_s = limiter.retry_after_s()
                if retry_after_s is not None:
                    self.stats.incr("refused")
                    raise falcon.HTTPTooManyRequests(
                        description=f"Rate limit of {count} requests per {period_s:g} s exceeded.", retry_after=retry_after_s)
            for limiter in self.limiters:
                limiter.record()
            self._in_progress += 1
            self.max_in_progress = max(self.max_in_progress, self._in_progress)
        try:
            self.answer()
        finally:
            with self._progress_lock:
                self._in_progress -= 1

    def answer(self) -> None:
        """Wait the latency, then maybe fail."""
        low_ms, high_ms = self.settings.latency_ms
        if high_ms > 0:
            self._sleep(self._random.uniform(low_ms, high_ms) / 1000)
        # One roll for both faults keeps each rate a fraction of all admitted requests.
        roll = self._random.random()
        if roll < self.settings.failure_rate:
            self.stats.incr("failed")
            raise falcon.HTTPServiceUnavailable(description="Injected failure.")
        if roll < self.settings.failure_rate + self.settings.timeout_rate:
            self.stats.incr("failed")
            self._sleep(self.settings.hang_s)
            raise falcon.HTTPGatewayTimeout(description="Injected timeout.")

    def report(self) -> dict[str, int]:
        """Return the counters with the fullest window seen."""
        return {**self.stats.snapshot(), "max_in_window": self.limiters[0].max_in_window,
                "max_in_windows": [limiter.max_in_window for limiter in self.limiters], "max_in_progress": self.max_in_progress}

    def reset(self) -> None:
        """Zero the counters and empty the window."""
        self.stats.reset()
        for limiter in self.limiters:
            limiter.reset()
        with self._progress_lock:
            self.max_in_progress = self._in_progress


def read_fetch_request(req: falcon.Request, required: tuple[str, ...] = ("request_id",)) -> dict[str, Any]:
    """Return the JSON object body of a fetch call, or raise 400 when it is unusable."""
    body = req.get_media()
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid body", description="The body must be a JSON object.")
    for field in required:
        if not isinstance(body.get(field), str) or not body[field]:
            raise falcon.HTTPBadRequest(title="Missing field", description=f"`{field}` must be a non-empty string.")
    return body


def vendor_record(body: dict[str, Any]) -> dict[str, Any]:
    """Build the vendor's answer, with padding and PII left in so result cleaning shows."""
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
    name = payload.get("name") if isinstance(payload.get("name"), str) else "John Doe"
    email = payload.get("email") if isinstance(payload.get("email"), str) else "john@example.com"
    return {
        "request_id": body["request_id"], "name": f"  {name}  ", "email": email, "phone": "555-0100",
        "pii": "sensitive", "ssn": "123-45-6789", "account": "xyz", "balance": 5000,
    }


class Health:
    """GET /healthz."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class StatsCollection:
    """GET /stats."""

    def __init__(self, vendor: MockVendor) -> None:
        self._vendor = vendor

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._vendor.report()


class StatsReset:
    """POST /stats/reset."""

    def __init__(self, vendor: MockVendor) -> None:
        self._vendor = vendor

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._vendor.reset()
        resp.media = self._vendor.report()


def create_base_app(vendor: MockVendor) -> falcon.App:
    """Build an app with orjson media and the health and stats routes."""
    app = falcon.App()
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    # JSON only: a form-encoded body gets 415 rather than a puzzling "missing field".
    app.req_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json_handler})
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.add_route("/healthz", Health())
    app.add_route("/stats", StatsCollection(vendor))
    app.add_route("/stats/reset", StatsReset(vendor))
    return app


def add_option(parser: argparse.ArgumentParser, env_prefix: str, flag: str, parse: Callable[[str], Any],
               default: str | None, help_text: str) -> None:
    """Add `--flag`, defaulting to the environment variable `PREFIX_FLAG` and then to `default`."""
    env_name = f"{env_prefix}_{flag.upper().replace('-', '_')}"
    # argparse runs `parse` on string defaults, so environment values are checked like flags.
    parser.add_argument(f"--{flag}", type=parse, default=os.environ.get(env_name, default),
                        help=f"{help_text} (env {env_name}, default {default})")


def build_parser(prog: str, env_prefix: str, default_port: int, description: str) -> argparse.ArgumentParser:
    """Build the command line shared by the mocks."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_option(parser, env_prefix, "host", str, "127.0.0.1", "interface to bind")
    add_option(parser, env_prefix, "port", int, str(default_port), "port to listen on")
    add_option(parser, env_prefix, "rate-limit", rate_limit_arg, "600/minute", "N/second|minute|hour|day, or several comma-separated; more answers 429")
    add_option(parser, env_prefix, "latency-ms", parse_latency_ms, "0", "added latency: MS or LOW-HIGH")
    add_option(parser, env_prefix, "failure-rate", parse_fraction, "0", "fraction of requests answered 503")
    add_option(parser, env_prefix, "timeout-rate", parse_fraction, "0", "fraction of requests that hang, then get 504")
    add_option(parser, env_prefix, "hang-s", float, "30", "how long a hanging request hangs")
    add_option(parser, env_prefix, "threads", int, "16", "gunicorn gthread threads")
    add_option(parser, env_prefix, "seed", int, None, "random seed for latency and failures")
    return parser


def parse_settings(parser: argparse.ArgumentParser, settings_class: type[MockSettings],
                   argv: list[str] | None = None) -> MockSettings:
    """Parse the command line into settings, exiting with a usage error when they conflict."""
    args = vars(parser.parse_args(argv))
    try:
        return settings_class(**{f.name: args[f.name] for f in fields(settings_class)})
    except ValueError as e:
        parser.error(str(e))


class MockServer(BaseApplication):
    """Serve a mock app under gunicorn: one process (the window is in memory), many threads."""

    def __init__(self, app_factory: Callable[[Any], falcon.App], settings: MockSettings) -> None:
        self._app_factory = app_factory
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"{self._settings.host}:{self._settings.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": self._settings.threads,
            # Hanging requests must not hold up a stop for long.
            "graceful_timeout": 3,
            # Every gunicorn on a machine shares one default control socket path; the mocks need none.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> falcon.App:
        # Runs in the worker after the fork, so background threads start where they serve.
        return self._app_factory(self._settings)


def serve(app_factory: Callable[[Any], falcon.App], settings: MockSettings) -> None:
    """Run the mock until it is stopped."""
    MockServer(app_factory, settings).run()
