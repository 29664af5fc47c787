"""A mock asynchronous vendor: POST /fetch answers 202, then calls `callback_url` with the data.

The callback is signed with Standard Webhooks headers when the mock has a `whsec_` secret, and
retried with exponential backoff on connection errors, 5xx and 429.

Run it with `python -m vendors.mock_async --port 6002 --callback-delay-s 1`; see --help.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import falcon
import orjson
import requests
from standardwebhooks import Webhook

from vendors.client import parse_retry_after
from vendors.mock_common import (
    MockSettings, MockVendor, add_option, build_parser, create_base_app, parse_settings, read_fetch_request, serve,
    vendor_record,
)

DEFAULT_PORT = 6002
CALLBACK_FIELDS = ("request_id", "account", "balance", "name", "email")
CALLBACK_STATS = ("callbacks_delivered", "callbacks_failed")

log = logging.getLogger("vendors.mock_async")  # not "__main__" under python -m


@dataclass(frozen=True)
class AsyncSettings(MockSettings):
    """How the async mock listens, misbehaves and calls back."""

    port: int = DEFAULT_PORT
    callback_delay_s: float = 1.0
    secret: str | None = None
    callback_retries: int = 5
    callback_backoff_s: float = 0.5
    callback_timeout_s: float = 5.0
    callback_threads: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.callback_delay_s < 0 or self.callback_retries < 0 or self.callback_backoff_s < 0:
            raise ValueError("callback delay, retries and backoff must not be negative")
        if self.secret:
            try:
                Webhook(self.secret)  # a malformed secret fails at start, not on the first callback
            except Exception as e:
                raise ValueError(f"invalid webhook secret: {e}") from e


class DelayedRunner:
    """Run calls on a few daemon threads once their delay has passed, earliest first."""

    def __init__(self, threads: int) -> None:
        self._due: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()  # breaks ties so calls are never compared
        self._changed = threading.Condition()
        for number in range(threads):
            threading.Thread(target=self._work, name=f"callback-{number}", daemon=True).start()

    def run_after(self, delay_s: float, call: Callable[..., None], *args: Any) -> None:
        """Schedule `call(*args)` in `delay_s` seconds."""
        with self._changed:
            heapq.heappush(self._due, (time.monotonic() + delay_s, next(self._order), call, args))
            self._changed.notify()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, call, args = heapq.heappop(self._due)
            try:
                call(*args)
            except Exception:
                log.exception("callback task failed")


class CallbackSender:
    """Deliver callbacks after the configured delay, signed when there is a secret."""

    def __init__(self, settings: AsyncSettings, vendor: MockVendor) -> None:
        self._settings = settings
        self._stats = vendor.stats
        self._webhook = Webhook(settings.secret) if settings.secret else None
        self._runner = DelayedRunner(settings.callback_threads)
        self._local = threading.local()

    def schedule(self, url: str, data: dict[str, Any]) -> None:
        """Queue one callback; its webhook-id stays the same across retries, as the scheme asks."""
        self._runner.run_after(self._settings.callback_delay_s, self._attempt, url, orjson.dumps(data),
                               f"msg_{uuid.uuid4().hex}", 1)

    def _attempt(self, url: str, body: bytes, msg_id: str, attempt: int) -> None:
        try:
            response = self._session().post(url, data=body, headers=self._headers(msg_id, body),
                                            timeout=self._settings.callback_timeout_s)
        except requests.RequestException as e:
            retryable, wait_s, outcome = True, 0.0, type(e).__name__
        else:
            if response.ok:
                self._stats.incr("callbacks_delivered")
                return
            retryable = response.status_code >= 500 or response.status_code == 429
            wait_s, outcome = _retry_after_s(response), f"HTTP {response.status_code}"
        if retryable and attempt <= self._settings.callback_retries:
            backoff_s = self._settings.callback_backoff_s * 2 ** (attempt - 1)
            log.info("callback %s to %s: %s, retry %d in %.2f s", msg_id, path_of(url), outcome, attempt, max(backoff_s, wait_s))
            self._runner.run_after(max(backoff_s, wait_s), self._attempt, url, body, msg_id, attempt + 1)
            return
        self._stats.incr("callbacks_failed")
        log.warning("callback %s to %s failed after %d attempt(s): %s", msg_id, path_of(url), attempt, outcome)

    def _headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._webhook is not None:
            # Whole seconds, because the signature covers the timestamp as sent.
            timestamp = datetime.fromtimestamp(int(time.time()), tz=timezone.utc)
            headers.update({
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(timestamp.timestamp())),
                "webhook-signature": self._webhook.sign(msg_id, timestamp, body.decode()),
            })
        return headers

    def _session(self) -> requests.Session:
        # A session per thread: requests does not promise that one Session is thread-safe.
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session


def _retry_after_s(response: requests.Response) -> float:
    """Return the receiver's Retry-After in seconds, or 0 when it gave none we can read."""
    return parse_retry_after(response.headers.get("Retry-After")) or 0.0


def path_of(url: str) -> str:
    """Return a URL without its query, which may carry a callback token that must not be logged."""
    return urlsplit(url)._replace(query="").geturl()


class AsyncFetch:
    """POST /fetch."""

    def __init__(self, vendor: MockVendor, callbacks: CallbackSender) -> None:
        self._vendor = vendor
        self._callbacks = callbacks

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_fetch_request(req, required=("request_id", "callback_url"))
        self._vendor.admit()
        record = vendor_record(body)
        self._callbacks.schedule(body["callback_url"], {field: record[field] for field in CALLBACK_FIELDS})
        resp.status = falcon.HTTP_202
        resp.media = {"status": "accepted", "request_id": body["request_id"]}
        self._vendor.stats.incr("served")


def create_app(settings: AsyncSettings | None = None) -> falcon.App:
    """Wire the async mock's routes and start its callback threads."""
    settings = settings or AsyncSettings()
    vendor = MockVendor(settings, extra_stats=CALLBACK_STATS)
    app = create_base_app(vendor)
    app.add_route("/fetch", AsyncFetch(vendor, CallbackSender(settings, vendor)))
    return app


def cli_parser() -> argparse.ArgumentParser:
    """Build the async mock's command line."""
    parser = build_parser("vendors.mock_async", "MOCK_ASYNC", DEFAULT_PORT, "Mock asynchronous vendor.")
    add_option(parser, "MOCK_ASYNC", "callback-delay-s", float, "1", "seconds before the callback")
    add_option(parser, "MOCK_ASYNC", "secret", str, None, "whsec_ secret to sign callbacks with (unsigned if unset)")
    add_option(parser, "MOCK_ASYNC", "callback-retries", int, "5", "retries of a callback after the first attempt")
    add_option(parser, "MOCK_ASYNC", "callback-backoff-s", float, "0.5", "first retry delay, doubled each time")
    add_option(parser, "MOCK_ASYNC", "callback-timeout-s", float, "5", "timeout of one callback attempt")
    add_option(parser, "MOCK_ASYNC", "callback-threads", int, "8", "threads delivering callbacks")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve the async mock with settings from flags and the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(create_app, parse_settings(cli_parser(), AsyncSettings, argv))


if __name__ == "__main__":
    main()
