"""The API's resources: one class per URL, each responder a few lines over `Jobs`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import falcon
import orjson

from service.egress import EgressPolicy, EgressRefused
from service.jobs import Jobs
from service.listing import read_list_query
from service.logs import about_job
from service.states import JobStatus
from service.waiting import poll_hint_s
from service.webhooks import WebhookAuth
from vendors.payloads import nested_deeper_than

MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_URL_LENGTH = 2048


def read_json_object(req: falcon.Request, max_depth: int) -> tuple[bytes, dict[str, Any]]:
    """Return the raw body and its JSON object, or raise a 4xx that says what is wrong."""
    content_type = (req.content_type or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise falcon.HTTPUnsupportedMediaType(description=f"send JSON with Content-Type: application/json, not {content_type}")
    raw = req.bounded_stream.read()
    if not raw.strip():
        raise falcon.HTTPBadRequest(title="Empty body", description="the body must be a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise falcon.HTTPBadRequest(title="Malformed JSON", description=f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise falcon.HTTPBadRequest(
            title="Not a JSON object", description=f"the body must be a JSON object, not a {type(data).__name__}",
        )
    if nested_deeper_than(data, max_depth):
        raise falcon.HTTPBadRequest(
            title="Nested too deeply", description=f"objects and lists in the body may nest at most {max_depth} levels deep",
        )
    return raw, data


def read_idempotency_key(req: falcon.Request) -> str | None:
    """Return the Idempotency-Key header, or raise 400 if it is not 1-255 printable characters."""
    key = req.get_header("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isprintable()):
        raise falcon.HTTPBadRequest(
            title="Invalid Idempotency-Key", description=f"an Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters",
        )
    return key


def sendable_url(url: str) -> bool:
    """Tell whether a callback URL is one an HTTP request can be sent to as it is."""
    if len(url) > MAX_URL_LENGTH or not url.isascii() or not url.isprintable():
        return False
    try:
        parts = urlsplit(url)
        port_ok = parts.port != 0  # raises ValueError past 65535 or when not a number
        host_ok = bool(parts.hostname) and bool(parts.hostname.encode("idna"))  # raises UnicodeError for a label over 63 characters
    except (ValueError, UnicodeError):
        return False
    return parts.scheme in ("http", "https") and port_ok and host_ok


class JobCollection:
    """POST /jobs: accept any JSON object as a job; GET /jobs: list the client's jobs."""

    for_clients = True

    def __init__(self, jobs: Jobs, callbacks: EgressPolicy | None, max_json_depth: int) -> None:
        self.jobs = jobs
        self.callbacks = callbacks  # None: this deployment sends no client callbacks
        self.max_json_depth = max_json_depth

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, payload = read_json_object(req, self.max_json_depth)
        request_id, estimate = self.jobs.submit(
            req.context.client, payload, req.get_param("vendor"),
            idempotency_key=read_idempotency_key(req), callback_url=self.read_callback_url(req),
        )
        resp.status = falcon.HTTP_202
        resp.location = f"/jobs/{request_id}"
        resp.retry_after = poll_hint_s(JobStatus.QUEUED.value, estimate)
        resp.media = {"request_id": request_id}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.jobs.page(req.context.client.name, read_list_query(req, list(self.jobs.registry.vendors)))

    def read_callback_url(self, req: falcon.Request) -> str | None:
        """Return the client's callback URL: query `callback_url`, else header `Callback-Url`; both checked."""
        given = [url for url in (req.get_param("callback_url"), req.get_header("Callback-Url")) if url is not None]
        if not given:
            return None
        for url in given:
            if not sendable_url(url):
                raise falcon.HTTPBadRequest(
                    title="Invalid callback_url",
                    description=f"callback_url must be an absolute http(s) URL of at most {MAX_URL_LENGTH} ASCII characters"
                                " (percent-encode others), with a valid host and port",
                )
        if self.callbacks is None:
            raise falcon.HTTPBadRequest(
                title="Callbacks not enabled", description="this deployment has no CALLBACK_SECRET, so it sends no client callbacks",
            )
        for url in given:
            try:
                self.callbacks.check_literal(urlsplit(url).hostname)
            except EgressRefused as error:
                raise falcon.HTTPBadRequest(title="Callback address refused", description=str(error)) from None
        return given[0]


class JobItem:
    """GET /jobs/{request_id}: the job's status and, once complete, its cleaned result."""

    for_clients = True

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        view = self.jobs.view(request_id, req.context.client.name)
        if "estimated_completion_at" in view:
            resp.retry_after = poll_hint_s(view["status"], view["estimated_completion_at"])
        resp.media = view


class JobCancel:
    """POST /jobs/{request_id}/cancel: the client takes its job back."""

    for_clients = True

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def on_post(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        resp.media = self.jobs.cancel(request_id, req.context.client.name)


class VendorWebhook:
    """POST /vendor-webhook/{vendor}: an async vendor delivers a job's data."""

    def __init__(self, jobs: Jobs, auth: WebhookAuth, max_json_depth: int) -> None:
        self.jobs = jobs
        self.auth = auth
        self.max_json_depth = max_json_depth

    def on_post(self, req: falcon.Request, resp: falcon.Response, vendor: str) -> None:
        registered = self.jobs.vendor(vendor)
        raw, data = read_json_object(req, self.max_json_depth)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise falcon.HTTPBadRequest(title="Missing request_id", description="the body must carry a string request_id")
        self.auth.verify(registered, request_id, raw, req.headers, req.get_param("token"))
        with about_job(request_id, registered.name):
            saved = self.jobs.receive_webhook(registered, request_id, data)
        self.auth.remember(registered, req.headers)
        resp.media = {"message": "Result saved" if saved else "Job cancelled; data discarded"}
