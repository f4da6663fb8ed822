"""The composition root: builds every component of one service process from its settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from billing.api.auth import Authenticator
from billing.core.config import Settings
from billing.infra.stores import EMBEDDED_WARNING, connect_mongo, connect_redis
from billing.ledger.scripts import Ledger
from billing.ledger.service import MoneyOperations

log = logging.getLogger("billing")


@dataclass
class Context:
    """Everything handlers need, composed once per process."""

    settings: Settings
    redis: Redis
    mongo: Any
    ledger: Ledger
    operations: MoneyOperations
    auth: Authenticator
    # Filled by later components (each owns its type): the outbox projector (billing/projection/projector.py),
    # the history read side (billing/views/history.py), the revenue reports (billing/views/reports.py),
    # metrics (billing/infra/metrics.py). None until built.
    projector: Any = None
    history: Any = None
    reports: Any = None
    metrics: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


async def build_context(settings: Settings, redis: Redis | None = None, mongo: Any = None) -> Context:
    if settings.embedded and redis is None:
        log.warning(EMBEDDED_WARNING)
    redis = redis if redis is not None else connect_redis(settings)
    mongo = mongo if mongo is not None else connect_mongo(settings)
    ledger = Ledger(redis, settings.redis_prefix, settings.idempotency_ttl_seconds)
    try:
        await ledger.load_scripts()
    except Exception as exc:  # Redis may be down at start; scripts load on first NOSCRIPT
        log.warning("could not load Lua scripts at start: %s", exc)
    return Context(
        settings=settings,
        redis=redis,
        mongo=mongo,
        ledger=ledger,
        operations=MoneyOperations(ledger),
        auth=Authenticator(settings.tokens),
    )
