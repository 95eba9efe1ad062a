"""cesard-http's metrics with prometheus_client, served at ``/metrics``: requests by
route, method and status with their latency (a histogram), jobs submitted."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "cesard_http_request_seconds", "HTTP request latency, from the request to the "
            "response's headers (a synchronous transcription waits for its job)",
            ["route", "method", "status"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.jobs = Counter("cesard_http_jobs_submitted", "jobs submitted over HTTP",
                            registry=self.registry)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(route, method, str(status)).observe(seconds)

    def submitted(self) -> None:
        self.jobs.inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
