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

from billing.infra.metrics_dir import ENV

log = logging.getLogger("billing.infra.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "(unmatched)"
# The method label's values: any other method (Tornado answers it 405) is counted as OTHER_METHOD, so a client
# inventing method names cannot add series without bound.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
OTHER_METHOD = "other"
FLUSH_EVERY_SECONDS = 0.05


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
        self.projector_conflicts = Counter(
            "billing_projector_conflicts",
            "Transactions whose id MongoDB already held with other content (kept in the outbox:conflicts stream)",
            registry=self.registry,
        )
        self.short_waits = Counter(
            "billing_redis_wait_short",
            "Money writes answered although fewer replicas than BILLING_REDIS_WAIT_REPLICAS acknowledged them in time",
            registry=self.registry,
        )
        self.webhook_events = Counter(
            "billing_webhook_events",
            "Events acknowledged by webhook receivers (a 2xx answer), by webhook",
            ["webhook"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "billing_webhook_failures",
            "Failed webhook delivery attempts (non-2xx, timeout, connection error), by webhook",
            ["webhook"],
            registry=self.registry,
        )
        # Label children by their label values. Bounded: routes are templates, methods and statuses few.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._operation_children: dict[tuple[str, str | None, bool], Any] = {}
        self._pending_requests: dict[tuple[str, str, int], tuple[tuple[Any, Any], list[float]]] = {}
        self._pending_operations: dict[tuple[str, str | None, bool], int] = {}
        self._pending_in_flight: int | None = None
        self._flush_scheduled = False

    # ---- recording ----------------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = OTHER_METHOD
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # .labels() costs more than the update itself: look each series up once
            labels = (route or UNMATCHED, method, str(status))
            children = self._request_children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        if not self.multiprocess:
            children[0].inc()
            children[1].observe(seconds)
            return
        pending = self._pending_requests.get(key)
        if pending is None:
            pending = self._pending_requests[key] = (children, [])
        pending[1].append(seconds)
        self._schedule_flush()

    def observe_operation(self, operation: str, code: str | None, replayed: bool, count: int = 1) -> None:
        """`count` operations with this outcome (a batch reports each distinct outcome once)."""
        key = (operation, code, replayed)
        child = self._operation_children.get(key)
        if child is None:
            child = self._operation_children[key] = self.operations.labels(
                operation, code or "ok", "true" if replayed else "false"
            )
        if not self.multiprocess:
            child.inc(count)
            return
        self._pending_operations[key] = self._pending_operations.get(key, 0) + count
        self._schedule_flush()

    def set_in_flight(self, requests: int) -> None:
        """The number of requests this worker is serving now."""
        if not self.multiprocess:
            self.in_flight.set(requests)
            return
        self._pending_in_flight = requests
        self._schedule_flush()

    # In multiprocess mode every update is a locked write into the worker's mmap file (about 1.2 µs, six per
    # request). Updates are gathered instead and written FLUSH_EVERY_SECONDS after the first of them: the
    # same totals, written at most that much later (a scrape flushes the answering worker's own first).

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_EVERY_SECONDS, self.flush)

    def flush(self) -> None:
        """Write the gathered updates into the metric files (render() calls it too)."""
        self._flush_scheduled = False
        requests, self._pending_requests = self._pending_requests, {}
        operations, self._pending_operations = self._pending_operations, {}
        in_flight, self._pending_in_flight = self._pending_in_flight, None
        for (counter, histogram), durations in requests.values():
            counter.inc(len(durations))
            for seconds in durations:
                histogram.observe(seconds)
        for key, count in operations.items():
            self._operation_children[key].inc(count)
        if in_flight is not None:
            self.in_flight.set(in_flight)

    def observe_projector_batch(self, entries: int, seconds: float) -> None:
        """For the outbox projector: call once per batch written to MongoDB (via ctx.metrics)."""
        self.projector_batches.inc()
        self.projector_entries.inc(entries)
        self.projector_seconds.observe(seconds)

    def observe_projector_conflicts(self, count: int) -> None:
        """For the outbox projector: transactions dead-lettered because their id was taken (via ctx.metrics)."""
        self.projector_conflicts.inc(count)

    def observe_short_wait(self, asked: int, acknowledged: int) -> None:
        """For the ledger's route: a write's WAIT came back with fewer replicas than asked for."""
        self.short_waits.inc()

    def observe_webhook_delivery(self, webhook: str, events: int) -> None:
        """For the webhook dispatcher: a batch of `events` was acknowledged."""
        self.webhook_events.labels(webhook).inc(events)

    def observe_webhook_failure(self, webhook: str) -> None:
        """For the webhook dispatcher: an attempt failed."""
        self.webhook_failures.labels(webhook).inc()

    # ---- exposition ---------------------------------------------------------------------------------

    async def render(self, projector: Any = None, webhooks: Any = None) -> bytes:
        """The Prometheus text of every worker, plus the outbox lag and the webhooks' state read now."""
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # (untyped upstream)
            text = generate_latest(registry)
        else:
            text = generate_latest(self.registry)
        lag_registry = CollectorRegistry()
        lag_registry.register(_LagCollector(await _read_lag(projector)))
        lag_registry.register(_WebhookCollector(await _read_webhooks(webhooks)))
        return text + generate_latest(lag_registry)


async def _read_webhooks(webhooks: Any) -> list[tuple[str, int, float | None]] | None:
    if webhooks is None:
        return None
    try:
        async with asyncio.timeout(1.0):
            return list(await webhooks.gauges())
    except Exception as exc:  # as for the lag: reported as a metric, never a failed scrape
        log.warning("could not read the webhooks' state: %r", exc)
        return None


class _WebhookCollector:
    """Each webhook's backlog and last acknowledged delivery, read from Redis at scrape time (whichever worker
    or instance delivers it)."""

    def __init__(self, rows: list[tuple[str, int, float | None]] | None) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        if self.rows is None:
            return
        pending = GaugeMetricFamily(
            "billing_webhook_pending_events", "Feed events not yet delivered, by webhook", labels=["webhook"]
        )
        success = GaugeMetricFamily(
            "billing_webhook_last_success_timestamp_seconds",
            "When a receiver last acknowledged a delivery (epoch seconds), by webhook",
            labels=["webhook"],
        )
        for name, count, last in self.rows:
            pending.add_metric([name], float(count))
            if last is not None:
                success.add_metric([name], last)
        yield pending
        yield success


async def _read_lag(projector: Any) -> dict[str, float] | None:
    if projector is None:
        return None
    try:
        async with asyncio.timeout(1.0):
            lag = await projector.lag()
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
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # (untyped upstream)
