"""The API's resources: one class per URL, each responder a few lines over `Jobs`."""

from __future__ import annotations

from typing import Any

import falcon
import orjson

from service.jobs import Jobs
from service.webhooks import WebhookAuth


def read_json_object(req: falcon.Request) -> tuple[bytes, dict[str, Any]]:
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
    return raw, data


class JobCollection:
    """POST /jobs: accept any JSON object as a job."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, payload = read_json_object(req)
        request_id = self.jobs.submit(payload, req.get_param("vendor"))
        resp.status = falcon.HTTP_202
        resp.location = f"/jobs/{request_id}"
        resp.media = {"request_id": request_id}


class JobItem:
    """GET /jobs/{request_id}: the job's status and, once complete, its cleaned result."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        resp.media = self.jobs.view(request_id)


class VendorWebhook:
    """POST /vendor-webhook/{vendor}: an async vendor delivers a job's data."""

    def __init__(self, jobs: Jobs, auth: WebhookAuth) -> None:
        self.jobs = jobs
        self.auth = auth

    def on_post(self, req: falcon.Request, resp: falcon.Response, vendor: str) -> None:
        registered = self.jobs.vendor(vendor)
        raw, data = read_json_object(req)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise falcon.HTTPBadRequest(title="Missing request_id", description="the body must carry a string request_id")
        self.auth.verify(registered, request_id, raw, req.headers, req.get_param("token"))
        self.jobs.receive_webhook(registered, request_id, data)
        self.auth.remember(registered, req.headers)
        resp.media = {"message": "Result saved"}
