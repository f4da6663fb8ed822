"""The components of one process as the HTTP handlers (API and console) see them.

billing.bootstrap builds it (as its Context, which adds start() and stop()); handlers name this type, so
they do not depend on the composition root that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from billing.api.auth import Authenticator
from billing.core.config import Settings
from billing.infra.observability import RequestObserver
from billing.infra.redis_route import RedisClient
from billing.infra.stores import MongoDatabase
from billing.ledger.scripts import Ledger
from billing.ledger.service import MoneyOperations
from billing.projection.projector import Projector
from billing.projection.seq_guard import SequenceGuard
from billing.views.accounting import Accounting
from billing.views.events import EventFeed
from billing.views.history import History
from billing.views.reports import Reports
from billing.webhooks.registry import Webhooks

if TYPE_CHECKING:  # prometheus_client must load after the metrics directory is set up (billing/cli.py)
    from billing.infra.metrics import Metrics


@dataclass
class ApiContext:
    settings: Settings
    redis: RedisClient
    mongo: MongoDatabase
    ledger: Ledger
    operations: MoneyOperations
    auth: Authenticator
    metrics: Metrics
    request_observer: RequestObserver  # the access log, request metrics and the in-flight count
    history: History
    events: EventFeed  # GET /v1/events
    projector: Projector  # the outbox projector; runs in this process when settings.projector_enabled
    sequence_guard: SequenceGuard
    reports: Reports
    accounting: Accounting  # balances at a moment and monthly statements, from the MongoDB ledger
    webhooks: Webhooks  # the admin side of webhooks (the dispatcher is bootstrap's Context.webhook_dispatcher)
