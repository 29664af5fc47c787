"""Count and time every API request, and serve /metrics."""

from __future__ import annotations

import time

import falcon

from service.metrics import HTTP_LATENCY, HTTP_REQUESTS, exposition


class RequestMetrics:
    """Falcon middleware: a counter and a latency histogram per route template."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        # The route template, not the path: one series for every /jobs/{request_id}.
        route = req.uri_template or "unmatched"
        HTTP_REQUESTS.labels(req.method, route, resp.status_code).inc()
        HTTP_LATENCY.labels(req.method, route).observe(time.perf_counter() - req.context.started)


class Metrics:
    """GET /metrics: Prometheus text format, every process of this host plus live queue state."""

    def __init__(self, *collectors) -> None:
        self.collectors = collectors

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.data = exposition(*self.collectors)
