"""Prometheus metrics of a server (``prometheus-client``), in a registry of its own per app.

- ``loratune_requests_total{route, adapter, status}``: requests, once per adapter they name;
- ``loratune_request_seconds{route, adapter}``: their latency, to the response's last byte;
- ``loratune_batch_items``: items per micro-batch (one shared forward per task family);
- ``loratune_adapters_loaded``, ``loratune_adapter_evictions_total``: read from the runtime at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from loratune.serve.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _RuntimeCollector:
    """The runtime's state as metrics, read when Prometheus scrapes."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily("loratune_adapters_loaded", "Adapters loaded on the base model now")
        loaded.add_metric([], len(self.runtime.loaded()))
        yield loaded
        evictions = CounterMetricFamily("loratune_adapter_evictions", "Adapters evicted by the memory budget")
        evictions.add_metric([], self.runtime.evictions)
        yield evictions


class ServerMetrics:
    """The counters and histograms one server updates."""

    def __init__(self, runtime: Runtime) -> None:
        disable_created_metrics()  # no *_created series: they double the output and nothing here reads them
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loratune_requests",
            "Requests per route, adapter and status code",
            ["route", "adapter", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "loratune_request_seconds",
            "Request latency per route and adapter",
            ["route", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "loratune_batch_items", "Items per micro-batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.registry.register(_RuntimeCollector(runtime))

    def observe(self, route: str, adapters: Iterable[str], status: int, seconds: float) -> None:
        """One request: counted and timed once per adapter it named (``-`` when none was valid)."""
        for adapter in sorted(set(adapters)) or ["-"]:
            self.requests.labels(route, adapter, str(status)).inc()
            self.latency.labels(route, adapter).observe(seconds)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class Measure:
    """ASGI middleware: each ``/v1/`` request counted and timed in ``metrics`` by route, the adapters it named
    (``request.state.adapters``) and status. Plain ASGI, as Starlette's ``BaseHTTPMiddleware`` would hide a
    client's disconnect from the routes, which stop a generation nobody waits for."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable[..., Awaitable]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            if route is not None and scope["path"].startswith("/v1/"):
                known = status not in (400, 404)  # no label values from names that are not adapters
                adapters = scope.get("state", {}).get("adapters", []) if known else []
                self.metrics.observe(route.path, adapters, status, time.perf_counter() - start)
