"""Per-request observation in the HTTP layer: the access log line and the HTTP request metrics
(count and latency by method, route template and status), recorded by RequestObserverMiddleware."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import LATENCY_BUCKETS

access_log = logging.getLogger("app.access")


class HttpMetrics:
    """HTTP requests and their latency, on `registry` (a new one when not given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("lemoe_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.http_latency = Histogram(
            "lemoe_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)


class RequestObserverMiddleware:
    """Every request, once: a line on the `app.access` logger (client, method, path, status,
    duration) and its count and time in the metrics, by route template (bounded labels).

    The query string is never logged: GET /v1/generate carries the prompt in it.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before responding

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            method = scope.get("method", "?")
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(method, template, status, seconds)
            client = scope.get("client")
            where = f"{client[0]}:{client[1]}" if client else "-"
            access_log.info('%s "%s %s" %d %.1fms', where, method, scope.get("path", "?"), status, seconds * 1000)
