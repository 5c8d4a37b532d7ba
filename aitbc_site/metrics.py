"""Prometheus metrics: request counts and latencies, plus gauges read from the database at scrape time.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` so the request
metrics of every worker are summed.
"""

import os
import time

from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from core.api.exceptions import error_response
from explorer.selectors import network_figures
from jobs.models import JobStatus

REQUESTS = Counter("api_requests_total", "HTTP requests served", ["method", "route", "status"])
DURATION = Histogram(
    "api_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class MetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = "/" + match.route if match and match.route else "unmatched"
        DURATION.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response


class PlatformCollector:
    """Gauges that are facts about the platform, read when scraped (``explorer.selectors.network_figures``:
    at most ``EXPLORER_STATS_CACHE_SECONDS`` old)."""

    def collect(self):
        figures = network_figures()
        active = GaugeMetricFamily("active_jobs", "Jobs queued or running", labels=["status"])
        for status in JobStatus.ACTIVE:
            active.add_metric([status], figures["jobs"][status])
        yield active
        miners = GaugeMetricFamily("registered_miners", "Registered miners", labels=["status"])
        for status, count in figures["miners"].items():
            miners.add_metric([status], count)
        yield miners
        depth = GaugeMetricFamily("queue_depth", "Queued jobs by model and priority", labels=["model", "priority"])
        for row in figures["queue_by_priority"]:
            depth.add_metric([row["model"], str(row["priority"])], row["depth"])
        yield depth


def metrics_view(request):
    if request.method not in ("GET", "HEAD"):
        response = error_response(
            request, status=405, detail=f'Method "{request.method}" not allowed.', code="METHOD_NOT_ALLOWED"
        )
        response["Allow"] = "GET, HEAD"
        return response
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(REQUESTS)
        registry.register(DURATION)
    registry.register(PlatformCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
