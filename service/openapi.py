"""The OpenAPI 3.1 description of the API, served at /openapi.json and checked by the tests."""

from __future__ import annotations

import falcon

JSON = "application/json"


def error(description: str, retry_after: bool = False) -> dict:
    """Describe an error response: falcon's JSON error body, maybe with Retry-After."""
    response = {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response


def ok(description: str, schema_name: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}
    if headers:
        response["headers"] = headers
    return response


BODY_ERRORS = {
    "411": error("A chunked body without Content-Length"),
    "413": error("The body is larger than MAX_BODY_BYTES"),
    "415": error("The Content-Type is not JSON"),
}
UNAVAILABLE = {"503": error("A data store is unavailable; try again after Retry-After seconds", retry_after=True)}
RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": {"$ref": "#/components/headers/RateLimit-Policy"}, "RateLimit": {"$ref": "#/components/headers/RateLimit"},
}
#: What every operation of the client API may answer besides its own: no key, or too many requests.
CLIENT_ERRORS = {
    "401": {**error("No API key, or one that is unknown or revoked (AUTH=keys)"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}},
    "429": {**error("Over the client's request rate, or (submitting) its backlog cap for the vendor; "
                    "try again after Retry-After seconds", retry_after=True)},
}
CLIENT_ERRORS["429"]["headers"].update(RATE_LIMIT_HEADERS)
#: The client API takes an API key, or none where AUTH=open makes the caller the client `public`.
CLIENT_SECURITY = [{"apiKey": []}, {}]
STATUSES = ["pending", "queued", "processing", "awaiting_webhook", "complete", "failed", "timed_out", "cancelled"]
REQUEST_ID = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}


def build_spec(vendor_names: list[str], callbacks: bool) -> dict:
    """Describe the API for a registry with these vendors, with or without client callbacks."""
    vendor = {"type": "string", "enum": sorted(vendor_names)}
    callback_parameters = [{
        "name": "callback_url", "in": "query", "required": False, "schema": {"type": "string", "format": "uri"},
        "description": "POST the final status and result here, signed with CALLBACK_SECRET (or use the Callback-Url header)",
    }, {
        "name": "Callback-Url", "in": "header", "required": False, "schema": {"type": "string", "format": "uri"},
    }] if callbacks else []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vendorfetch",
            "version": "1.0.0",
            "description": "Fetch account data from third-party vendors within their rate limits.",
        },
        "paths": {
            "/jobs": {"post": {
                "operationId": "submitJob",
                "security": CLIENT_SECURITY,
                "summary": "Submit a job; any JSON object is passed to the vendor",
                "parameters": [{
                    "name": "vendor", "in": "query", "required": False, "schema": vendor,
                    "description": "Pin the job to this vendor instead of the round-robin choice",
                }, {
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
                    "description": "Repeat a submission safely: the same key and request return the first job",
                }, *callback_parameters],
                "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
                "responses": {
                    "202": ok("Stored and queued", "Submitted", {
                        "Location": {"schema": {"type": "string"}}, "Retry-After": {"$ref": "#/components/headers/PollAfter"},
                        **RATE_LIMIT_HEADERS,
                    }),
                    "400": error("Malformed JSON, a body that is not a JSON object, an unknown or disabled vendor, "
                             "an invalid Idempotency-Key or callback_url, or callbacks not enabled"),
                "409": error("The first request with this Idempotency-Key is still being stored; retry shortly"),
                "422": error("The Idempotency-Key was used before with a different request"),
                    **BODY_ERRORS,
                    **CLIENT_ERRORS,
                    "503": error("A data store is unavailable, or the vendor's backlog is full or it is paused for longer "
                                 "than its max_wait_s; try again after Retry-After seconds", retry_after=True),
                },
            }, "get": {
                "operationId": "listJobs",
                "summary": "List the client's own jobs, newest first, a page at a time",
                "security": CLIENT_SECURITY,
                "parameters": [
                    {"name": "status", "in": "query", "required": False, "schema": {"enum": STATUSES}},
                    {"name": "vendor", "in": "query", "required": False, "schema": vendor},
                    {"name": "created_after", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"}},
                    {"name": "created_before", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"}},
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "starting_after", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "The next_cursor of the page before"},
                ],
                "responses": {
                    "200": ok("A page of the client's jobs", "JobList", RATE_LIMIT_HEADERS),
                    "400": error("A parameter that is unknown or not valid; the title names it"),
                    **CLIENT_ERRORS,
                    **UNAVAILABLE,
                },
            }},
            "/jobs/{request_id}": {"get": {
                "operationId": "getJob",
                "summary": "Read a job's status and, once complete, its cleaned result",
                "security": CLIENT_SECURITY,
                "parameters": [REQUEST_ID],
                "responses": {
                    "200": ok("The job; Retry-After while it is not final", "Job", {
                        "Retry-After": {"$ref": "#/components/headers/PollAfter"}, **RATE_LIMIT_HEADERS,
                    }),
                    "404": error("No job of this client has this request_id"),
                    **CLIENT_ERRORS,
                    **UNAVAILABLE,
                },
            }},
            "/jobs/{request_id}/cancel": {"post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job that has not finished; cancelling a cancelled job answers the same again",
                "security": CLIENT_SECURITY,
                "parameters": [REQUEST_ID],
                "responses": {
                    "200": ok("The cancelled job", "Job", RATE_LIMIT_HEADERS),
                    "404": error("No job of this client has this request_id"),
                    "409": error("The job finished (complete, failed or timed out) before it could be cancelled"),
                    **CLIENT_ERRORS,
                    **UNAVAILABLE,
                },
            }},
            "/vendor-webhook/{vendor}": {"post": {
                "operationId": "vendorWebhook",
                "summary": "An async vendor delivers a job's data",
                "parameters": [
                    {"name": "vendor", "in": "path", "required": True, "schema": vendor},
                    {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "The per-job token our callback_url carried (webhook_auth = token)"},
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": "#/components/schemas/WebhookBody"}}}},
                "responses": {
                    "200": ok("The result was saved, or had been saved by an earlier identical delivery, or the job "
                              "was cancelled and the data discarded", "Saved"),
                    "400": error("Malformed JSON, a body that is not a JSON object, or no string request_id"),
                    **BODY_ERRORS,
                    "401": error("Missing or invalid signature or token, or a stale timestamp"),
                    "403": error("The job was sent to another vendor"),
                    "404": error("Unknown vendor or unknown request_id"),
                    "409": error("The job already failed or timed out, or the webhook-id was replayed"),
                    "422": error("The data cannot be stored (an integer wider than 64 bits, or too large)"),
                    **UNAVAILABLE,
                },
            }},
            "/healthz": {"get": {
                "operationId": "liveness", "summary": "The process is alive",
                "responses": {"200": ok("Alive", "Liveness")},
            }},
            "/readyz": {"get": {
                "operationId": "readiness", "summary": "Redis and MongoDB answer and the registry is loaded",
                "responses": {"200": ok("Ready", "Readiness"), "503": ok("Not ready", "Readiness")},
            }},
            "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics of every process on this host",
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": {"description": "The OpenAPI document", "content": {JSON: {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "headers": {
                "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "string"}},
                "PollAfter": {"description": "Seconds until polling the job is worthwhile (1 to 60)", "schema": {"type": "string"}},
                "RateLimit-Policy": {
                    "description": 'The client\'s request quota (draft-ietf-httpapi-ratelimit-headers), e.g. "requests";q=50;w=1',
                    "schema": {"type": "string"},
                },
                "RateLimit": {
                    "description": 'What is left of the quota and seconds until it resets, e.g. "requests";r=49;t=1',
                    "schema": {"type": "string"},
                },
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, vf_..., from `python -m service.clients`"},
            },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["title"],
                    "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                },
                "Submitted": {
                    "type": "object", "required": ["request_id"],
                    "properties": {"request_id": {"type": "string", "format": "uuid"}},
                },
                "Job": {
                    "type": "object", "required": ["request_id", "status", "result"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "status": {"enum": STATUSES},
                        "result": {"type": ["object", "null"], "description": "The cleaned vendor data once complete"},
                        "vendor": {"type": "string"},
                        "attempts": {"type": "integer", "minimum": 0},
                        "error": {"type": "string"},
                        "removed_keys": {"type": "array", "items": {"type": "string"}},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "estimated_completion_at": {
                            "type": ["string", "null"], "format": "date-time",
                            "description": "While the job is not final: when it should be done (null if that cannot be told now)",
                        },
                    },
                },
                "WebhookBody": {
                    "type": "object", "required": ["request_id"],
                    "properties": {"request_id": {"type": "string", "minLength": 1}},
                    "additionalProperties": True,
                },
                "JobList": {
                    "type": "object", "required": ["data", "has_more", "next_cursor"],
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                        "has_more": {"type": "boolean"},
                        "next_cursor": {"type": ["string", "null"], "description": "starting_after for the next page"},
                    },
                },
                "Saved": {
                    "type": "object", "required": ["message"],
                    "properties": {"message": {"enum": ["Result saved", "Job cancelled; data discarded"]}},
                },
                "Liveness": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                "Readiness": {
                    "type": "object", "required": ["status", "checks", "warnings"],
                    "properties": {
                        "status": {"enum": ["ready", "unavailable"]},
                        "checks": {"type": "object"},
                        "warnings": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }


class OpenAPIDocument:
    """GET /openapi.json: the API's OpenAPI 3.1 description."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.spec
