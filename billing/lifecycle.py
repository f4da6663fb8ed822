"""What starts with a worker besides the HTTP server, and what stops before it exits."""

from __future__ import annotations

from billing.context import Context


async def start_components(ctx: Context) -> None:
    """Start background components of one worker (the outbox projector, metrics)."""


async def stop_components(ctx: Context) -> None:
    """Stop them in reverse order, letting each finish the work in hand."""
    await ctx.redis.aclose()
