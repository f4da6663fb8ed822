"""What starts with a worker besides the HTTP server, and what stops before it exits."""

from __future__ import annotations

import secrets

from billing.bootstrap import Context
from billing.infra import redis_raw
from billing.infra.metrics import Metrics
from billing.infra.observability import RequestObserver
from billing.projection.projector import Projector
from billing.projection.seq_guard import SequenceGuard
from billing.projection.store import LedgerStore
from billing.views.history import History
from billing.views.reports import Reports


def start_observability(ctx: Context) -> None:
    """Metrics, the access log and the in-flight count, hooked into every request and money operation."""
    if ctx.metrics is None:
        ctx.metrics = Metrics()
    observer = RequestObserver(ctx.metrics, ctx.settings.log_requests)
    ctx.extras["request_observer"] = observer
    ctx.extras["on_request_started"] = observer.started
    ctx.extras["on_request_finished"] = observer.finished
    ctx.extras["on_request_abandoned"] = observer.abandoned
    ctx.operations.observer = ctx.metrics.observe_operation


async def start_components(ctx: Context) -> None:
    """Start background components of one worker (the outbox projector, metrics)."""
    start_observability(ctx)
    # History cursors are signed with the service secret; without one they hold only in this process.
    ctx.history = History(ctx.mongo, ctx.ledger, ctx.settings.secret or secrets.token_urlsafe(32))
    # The projector makes the MongoDB indexes before its first batch (retrying while MongoDB is down).
    ctx.projector = Projector.from_context(ctx)
    ctx.projector.on_batch = ctx.metrics.observe_projector_batch
    ctx.projector.on_conflict = ctx.metrics.observe_projector_conflicts
    guard = SequenceGuard(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))
    ctx.extras["sequence_guard"] = guard
    ctx.operations.write_gate = guard.ensure_writable
    await guard.start()
    ctx.extras["readiness"] = lambda: _readiness(ctx.projector, guard)
    if ctx.settings.projector_enabled:
        await ctx.projector.start()
    ctx.reports = Reports(ctx.mongo, ctx.settings, lag_probe=lambda: _projector_lag(ctx))


async def _readiness(projector: Projector, guard: SequenceGuard) -> dict:
    return {**await projector.readiness(), **await guard.readiness()}


async def stop_components(ctx: Context) -> None:
    """Stop them in reverse order, letting each finish the work in hand."""
    guard = ctx.extras.get("sequence_guard")
    if guard is not None:
        await guard.stop()
    if ctx.projector is not None:
        await ctx.projector.stop()
    redis_raw.close(ctx.redis)
    await ctx.redis.aclose()


async def _projector_lag(ctx: Context) -> dict | None:
    """The outbox lag the report cache waits on (None while no projector runs in this process)."""
    return await ctx.projector.lag() if ctx.projector is not None else None
