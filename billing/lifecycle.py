"""What starts with a worker besides the HTTP server, and what stops before it exits."""

from __future__ import annotations

from billing.context import Context
from billing.metrics import Metrics
from billing.observability import RequestObserver


def start_observability(ctx: Context) -> None:
    """Metrics, the access log and the in-flight count, hooked into every request and money operation."""
    if ctx.metrics is None:
        ctx.metrics = Metrics()
    observer = RequestObserver(ctx.metrics, ctx.settings.log_requests)
    ctx.extras["request_observer"] = observer
    ctx.extras["on_request_started"] = observer.started
    ctx.extras["on_request_finished"] = observer.finished
    ctx.operations.observer = ctx.metrics.observe_operation


async def start_components(ctx: Context) -> None:
    """Start background components of one worker (the outbox projector, metrics)."""
    start_observability(ctx)


async def stop_components(ctx: Context) -> None:
    """Stop them in reverse order, letting each finish the work in hand."""
    await ctx.redis.aclose()
