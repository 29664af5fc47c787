"""Prometheus metrics, summed across every gunicorn, dramatiq and clock process sharing a folder.

prometheus-client picks multiprocess mode when the first metric is built, from the environment,
so this module sets PROMETHEUS_MULTIPROC_DIR (if unset) before importing it. Import it before
anything else imports prometheus_client. Processes that should report together share the folder;
containers sharing it have pids of their own, so each file is named by host and pid.
"""

from __future__ import annotations

import os
import socket
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "vendorfetch-metrics"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

# Called on every update to notice a fork; the host name is read once, the pid each time.
HOST = socket.gethostname()
values.ValueClass = values.MultiProcessValue(lambda: f"{HOST}-{os.getpid()}")

JOBS_SUBMITTED = Counter("vendorfetch_jobs_submitted_total", "Jobs accepted by POST /jobs", ["vendor"])
JOBS_FINISHED = Counter("vendorfetch_jobs_finished_total", "Jobs that reached a final state", ["vendor", "status"])
JOB_DURATION = Histogram(
    "vendorfetch_job_duration_seconds", "Time from submission to a final state", ["vendor", "status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
VENDOR_REQUESTS = Counter("vendorfetch_vendor_requests_total", "Calls to vendors by outcome", ["vendor", "outcome"])
VENDOR_LATENCY = Histogram(
    "vendorfetch_vendor_request_seconds", "Latency of calls to vendors", ["vendor"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEFERRALS = Counter(
    "vendorfetch_rate_limit_deferrals_total", "Fetches put back to wait for their vendor", ["vendor", "reason"],
)
WEBHOOKS = Counter("vendorfetch_webhooks_total", "Vendor webhooks by outcome", ["vendor", "outcome"])
HTTP_REQUESTS = Counter("vendorfetch_http_requests_total", "API requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "vendorfetch_http_request_seconds", "API request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SWEEP_JOBS = Counter("vendorfetch_sweep_jobs_total", "Jobs changed by the clock's sweeps", ["sweep", "action"])


def exposition(*collectors) -> bytes:
    """Render every process's metrics plus the given live collectors in the text format."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def gauge(name: str, documentation: str, labels: list[str], samples: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    """Build a gauge family from {label values: value}, for collectors that read live state."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in samples.items():
        family.add_metric(list(label_values), value)
    return family
