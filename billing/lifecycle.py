"""What starts with a worker besides the HTTP server, and what stops before it exits."""

from __future__ import annotations

import secrets

from billing.context import Context
from billing.history import History


async def start_components(ctx: Context) -> None:
    """Start background components of one worker (the outbox projector, metrics)."""
    # History cursors are signed with the service secret; without one they hold only in this process.
    ctx.history = History(ctx.mongo, ctx.ledger, ctx.settings.secret or secrets.token_urlsafe(32))


async def stop_components(ctx: Context) -> None:
    """Stop them in reverse order, letting each finish the work in hand."""
    await ctx.redis.aclose()
