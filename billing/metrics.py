"""Prometheus metrics: HTTP requests, money operation outcomes, outbox lag; one answer across pre-forked workers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from billing.metrics_dir import ENV

log = logging.getLogger("billing.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "(unmatched)"


def multiprocess_mode() -> bool:
    """True when workers share metric files (PROMETHEUS_MULTIPROC_DIR set before prometheus_client loaded)."""
    if not os.environ.get(ENV):
        return False
    if "MmapedValue" not in getattr(values.ValueClass, "__qualname__", ""):
        raise RuntimeError(
            f"{ENV} was set after prometheus_client was imported: each worker would count alone. "
            "Set it before importing billing.server (billing/metrics_dir.prepare does)."
        )
    return True


class Metrics:
    """The metrics of one worker process; render() answers for all workers of the service."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        labels = ["route", "method", "status"]
        self.requests = Counter(
            "billing_http_requests",
            "HTTP requests by route template, method and status",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "billing_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "billing_http_requests_in_flight",
            "HTTP requests being served now",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.operations = Counter(
            "billing_operations",
            "Money operations (Lua script outcomes) by operation and result code (ok or the problem code)",
            ["operation", "code", "replayed"],
            registry=self.registry,
        )
        self.projector_batches = Counter(
            "billing_projector_batches", "Outbox batches projected into MongoDB", registry=self.registry
        )
        self.projector_entries = Counter(
            "billing_projector_entries", "Outbox entries projected into MongoDB", registry=self.registry
        )
        self.projector_seconds = Histogram(
            "billing_projector_batch_duration_seconds",
            "Time to project one outbox batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    # ---- recording ----------------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route or UNMATCHED, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_operation(self, operation: str, code: str | None, replayed: bool, count: int = 1) -> None:
        """`count` operations with this outcome (a batch reports each distinct outcome once)."""
        self.operations.labels(operation, code or "ok", "true" if replayed else "false").inc(count)

    def observe_projector_batch(self, entries: int, seconds: float) -> None:
        """For the outbox projector: call once per batch written to MongoDB (via ctx.metrics)."""
        self.projector_batches.inc()
        self.projector_entries.inc(entries)
        self.projector_seconds.observe(seconds)

    # ---- exposition ---------------------------------------------------------------------------------

    async def render(self, projector: Any = None) -> bytes:
        """The Prometheus text of every worker, plus the outbox lag read now."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            text = generate_latest(registry)
        else:
            text = generate_latest(self.registry)
        lag_registry = CollectorRegistry()
        lag_registry.register(_LagCollector(await _read_lag(projector)))
        return text + generate_latest(lag_registry)


async def _read_lag(projector: Any) -> dict[str, float] | None:
    if projector is None:
        return None
    try:
        lag = await asyncio.wait_for(projector.lag(), timeout=1.0)
    except Exception as exc:  # a scrape reports the failure as a metric, never fails
        log.warning("could not read the outbox lag: %r", exc)
        return None
    return {key: float(value) for key, value in lag.items() if isinstance(value, int | float)}


class _LagCollector:
    """Outbox lag as read at scrape time (the same for every worker: it is the shared stream's state)."""

    def __init__(self, lag: dict[str, float] | None) -> None:
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("billing_outbox_lag_up", "1 when the outbox lag could be read (projector running)")
        up.add_metric([], 0.0 if self.lag is None else 1.0)
        yield up
        if self.lag is None:
            return
        entries = GaugeMetricFamily("billing_outbox_lag_entries", "Outbox entries not yet projected into MongoDB")
        entries.add_metric([], self.lag.get("entries", 0.0))
        yield entries
        age = GaugeMetricFamily("billing_outbox_lag_seconds", "Age of the oldest outbox entry not yet projected")
        age.add_metric([], self.lag.get("oldest_age_seconds", 0.0))
        yield age


def mark_process_dead(pid: int) -> None:
    """Supervisor side: drop a dead worker's live gauges (counters stay summed)."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)
