"""Prometheus metrics of the service: edits by status, generation latency, route scores, training
runs, and the stack this process serves (served and quarantined experts). The services and the
worker record them; the HTTP request metrics live beside the middleware that records them
(app.api.request_metrics). The last routes are also kept as samples (GET /v1/route-scores).

Each app has its own registry (several apps live in one test process); /metrics renders it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.domain import EditStatus, ExpertStatus

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TRAINING_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
ROUTE_SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(-10, 11))
RECENT_ROUTES = 1000


@dataclass(frozen=True)
class RouteSample:
    """How one routed request went: its score against the nearest anchor and who served it."""

    at: datetime
    score: float
    expert_id: int | None
    expert_name: str | None  # None: the gate stayed shut, the base model answered
    nearest_edit_id: int | None


class RecentRoutes:
    """The last `size` routes of this process, oldest first (thread-safe)."""

    def __init__(self, size: int = RECENT_ROUTES) -> None:
        self._samples: deque[RouteSample] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, sample: RouteSample) -> None:
        with self._lock:
            self._samples.append(sample)

    def last(self, n: int) -> list[RouteSample]:
        with self._lock:
            return list(self._samples)[-n:] if n > 0 else []


class _StoreCollector(Collector):
    """Edits by status and active experts, read from SQL at scrape time (always current)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def describe(self) -> list:  # no SQL at registration time
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        edits = GaugeMetricFamily("lemoe_edits", "Edits by status", labels=["status"])
        experts = GaugeMetricFamily("lemoe_active_experts", "Experts in the active stack")
        try:
            with self.session_factory() as session:
                counts = {s: store.count_edits(session, status=s) for s in EditStatus}
                active = len(store.list_experts(session, status=ExpertStatus.ACTIVE))
        except Exception:  # a scrape must not fail because the database is down
            log.warning("metrics: cannot read edit counts", exc_info=True)
            return
        for status, count in counts.items():
            edits.add_metric([status.value], count)
        experts.add_metric([], active)
        yield edits
        yield experts


class _StackCollector(Collector):
    """The stack this process serves, read at scrape time: served and quarantined experts."""

    def __init__(self, stack: Callable[[], Any]) -> None:
        self.stack = stack  # returns the LiveStack, or None while the model loads

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stack = self.stack()
        if stack is None or stack.version is None:
            return
        served = GaugeMetricFamily("lemoe_served_experts", "Experts in the stack this process serves")
        served.add_metric([], len(stack.active_names()))
        quarantined = GaugeMetricFamily(
            "lemoe_quarantined_experts",
            "Active experts this process does not serve: their files are missing or corrupt",
        )
        quarantined.add_metric([], len(stack.quarantined))
        version = GaugeMetricFamily("lemoe_served_stack_version", "The active-stack version this process has loaded")
        version.add_metric([], stack.version)
        yield served
        yield quarantined
        yield version


class _BatchCollector(Collector):
    """How full the generation batch is, read at each scrape from the engine's scheduler."""

    def __init__(self, scheduler: Callable[[], Any]) -> None:
        self.scheduler = scheduler

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        scheduler = self.scheduler()
        if scheduler is None:
            return
        running = GaugeMetricFamily("lemoe_generation_batch_rows", "Generations decoding together in the batch now")
        running.add_metric([], scheduler.running)
        waiting = GaugeMetricFamily("lemoe_generations_waiting", "Generations waiting for a place in the batch")
        waiting.add_metric([], scheduler.waiting)
        yield running
        yield waiting


class Metrics:
    """The service's metrics on `registry` (a new one when not given; the app passes the one its
    HTTP metrics are on, so /metrics renders both)."""

    def __init__(self, session_factory: sessionmaker[Session] | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.generation_latency = Histogram(
            "lemoe_generation_duration_seconds",
            "Generation latency (model time)",
            ["routed"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter("lemoe_generated_tokens", "Generated tokens", registry=r)
        self.generations_stopped = Counter(
            "lemoe_generations_stopped",
            "Generations stopped early: cancelled (the client hung up), deadline (past LEMOE_GENERATION_TIMEOUT_S) "
            "or refused at capacity (overloaded)",
            ["reason"],
            registry=r,
        )
        for reason in ("cancelled", "deadline", "overloaded"):
            self.generations_stopped.labels(reason)  # present at 0 from the start
        self.route_score = Histogram(
            "lemoe_route_score",
            "Route score of each request served while experts were live (the gate compares it with its threshold)",
            ["routed"],
            buckets=ROUTE_SCORE_BUCKETS,
            registry=r,
        )
        self.recent_routes = RecentRoutes()
        self.edits_submitted = Counter("lemoe_edits_submitted", "Edits accepted", registry=r)
        self.training_runs = Counter("lemoe_training_runs", "Finished training runs", ["status"], registry=r)
        self.training_duration = Histogram(
            "lemoe_training_run_duration_seconds",
            "Training run duration",
            ["status"],
            buckets=TRAINING_BUCKETS,
            registry=r,
        )
        if session_factory is not None:
            r.register(_StoreCollector(session_factory))

    def track_stack(self, stack: Callable[[], Any]) -> None:
        """Report the stack that `stack()` returns (the app's LiveStack once it is loaded)."""
        self.registry.register(_StackCollector(stack))

    def track_batch(self, scheduler: Callable[[], Any]) -> None:
        """Report the generation scheduler that `scheduler()` returns (None until the model is loaded)."""
        self.registry.register(_BatchCollector(scheduler))

    def observe_generation(self, seconds: float, *, routed: bool, tokens: int) -> None:
        self.generation_latency.labels("true" if routed else "false").observe(seconds)
        self.generated_tokens.inc(tokens)

    def observe_route(self, sample: RouteSample) -> None:
        self.route_score.labels("true" if sample.expert_name is not None else "false").observe(sample.score)
        self.recent_routes.add(sample)

    def observe_stopped_generation(self, reason: str) -> None:
        self.generations_stopped.labels(reason).inc()

    def observe_run(self, status: str, seconds: float) -> None:
        self.training_runs.labels(status).inc()
        self.training_duration.labels(status).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
