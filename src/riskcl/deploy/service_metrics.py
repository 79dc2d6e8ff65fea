"""``GET /metrics``: the service's health in Prometheus' text format (the ``prometheus-client`` library).

Per endpoint: request latency (histogram) and responses by status code; decisions by outcome; images the input
check flagged; micro-batch sizes (histogram) and the batcher's queue depth; the model's load time; and the model's
identity as the labels of ``riskcl_model_info`` (SHA-256, operating point id and threshold, certified, riskcl
version), so a dashboard can tell which model answered. One registry per app (several apps in one process, as in
the tests, never share counters). :class:`MetricsMiddleware` measures every response, including the 401 / 413 /
429 that other middleware gives before the app runs.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

ENDPOINTS = ("/", "/health", "/ready", "/model", "/predict", "/explain", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The service's metrics in their own registry."""

    def __init__(self, model: Mapping[str, str], queue_depth) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry()
        self.latency = Histogram("riskcl_request_seconds", "Request latency per endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.responses = Counter("riskcl_responses", "Responses per endpoint and status code", ["endpoint", "status"],
                                 registry=self.registry)
        self.decisions = Counter("riskcl_decisions", "Decisions given, by outcome", ["decision"],
                                 registry=self.registry)
        self.flags = Counter("riskcl_input_flags", "Images the input check flagged as unlike the calibration data",
                             registry=self.registry)
        self.batches = Histogram("riskcl_batch_size", "Images per model call (micro-batching)",
                                 buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue = Gauge("riskcl_queue_depth", "Images waiting for the model", registry=self.registry)
        self.queue.set_function(queue_depth)
        self.load = Gauge("riskcl_model_load_seconds", "Time the model took to load at start", registry=self.registry)
        Info("riskcl_model", "The served model and its operating point", registry=self.registry).info(dict(model))

    def decided(self, answer: Mapping[str, Any]) -> None:
        self.decisions.labels(str(answer.get("decision"))).inc()
        if answer.get("unusual"):
            self.flags.inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: each response's latency and status, by endpoint (unknown paths count as ``other``)."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        start, status = time.perf_counter(), {"code": 500}

        async def observed(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            self.metrics.responses.labels(endpoint, str(status["code"])).inc()
