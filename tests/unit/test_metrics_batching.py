"""Metric updates gathered for a short interval (multiprocess mode) give the same series as direct updates."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from billing.infra import metrics as metrics_module
from billing.infra.metrics import FLUSH_EVERY_SECONDS, Metrics

DURATIONS = [0.0, 0.0004, 0.001, 0.0010001, 0.003, 0.0099, 0.01, 0.2, 0.7, 9.9, 10.0, 12.5, 42.0]


def series(registry: CollectorRegistry, prefix: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line.startswith(prefix) and "_created" not in line]


async def test_gathered_updates_are_written_after_the_interval(monkeypatch) -> None:
    interval = max(FLUSH_EVERY_SECONDS, 0.3)  # long enough that a stalled test machine cannot pass it unseen
    monkeypatch.setattr(metrics_module, "FLUSH_EVERY_SECONDS", interval)
    direct, gathered = Metrics(), Metrics()
    gathered.multiprocess = True  # gather as the pre-forked workers do (the values stay in memory here)
    for metrics in (direct, gathered):
        metrics.set_in_flight(3)
        for seconds in DURATIONS:
            metrics.observe_request("/v1/deposits", "POST", 201, seconds)
        metrics.observe_request("", "GET", 404, 0.002)
        metrics.observe_operation("deposit", None, False)
        metrics.observe_operation("deposit", None, False)
        metrics.observe_operation("withdrawal", "insufficient_funds", False)
        metrics.set_in_flight(1)
    written = series(gathered.registry, "billing_http_requests_total")
    assert written and all(line.endswith(" 0.0") for line in written)  # nothing written yet
    await asyncio.sleep(0)
    assert all(line.endswith(" 0.0") for line in series(gathered.registry, "billing_http_requests_total"))
    await asyncio.sleep(interval + 0.1)
    for prefix in ("billing_http_requests", "billing_http_request_duration", "billing_operations"):
        assert series(gathered.registry, prefix) == series(direct.registry, prefix)
    assert 'billing_http_requests_total{method="GET",route="(unmatched)",status="404"} 1.0' in series(
        gathered.registry, "billing_http_requests_total"
    )
    assert series(gathered.registry, "billing_http_requests_in_flight") == ["billing_http_requests_in_flight 1.0"]
    gathered.observe_operation("deposit", None, True)
    gathered.flush()  # render() flushes first, so a scrape sees this worker's latest requests
    assert any('replayed="true"} 1.0' in line for line in series(gathered.registry, "billing_operations_total"))
