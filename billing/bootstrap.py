"""The composition root: bootstrap() builds every component of one process from its settings; Context.start()
starts its background parts and Context.stop() stops them."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from billing.api.auth import Authenticator
from billing.api.context import ApiContext
from billing.core.config import Settings
from billing.infra.observability import RequestObserver
from billing.infra.redis_route import RedisClient
from billing.infra.stores import (
    EMBEDDED_WARNING,
    MongoDatabase,
    close_redis,
    connect_mongo,
    connect_node,
    connect_redis,
)
from billing.ledger.expiry import ReservationSweeper
from billing.ledger.scripts import Ledger
from billing.ledger.service import MoneyOperations
from billing.ledger.transits import TransitRecovery
from billing.ledger.unavailable import store_unavailable
from billing.projection.projector import Projector
from billing.projection.seq_guard import SequenceGuard
from billing.projection.store import LedgerStore
from billing.views.accounting import Accounting
from billing.views.events import EventFeed
from billing.views.history import History
from billing.views.reports import Reports
from billing.webhooks.dispatcher import HttpSender, WebhookDispatcher
from billing.webhooks.registry import Webhooks
from billing.webhooks.store import WebhookStore

log = logging.getLogger("billing")


@dataclass
class Context(ApiContext):
    """One process's components, with their start and stop."""

    # Completes transfers between partitions whose request died between their steps (in every worker).
    transit_recovery: TransitRecovery | None = None
    # Releases reservations past their deadline (in every worker).
    reservation_sweeper: ReservationSweeper | None = None
    # Delivers the webhooks whose leases it takes (in every worker).
    webhook_dispatcher: WebhookDispatcher | None = None
    # Stores opened by bootstrap() are closed by stop(); stores passed in belong to the caller.
    owns_redis: bool = False
    owns_mongo: bool = False

    async def start(self) -> None:
        """Check the partition count, hook metrics and the sequence check into money operations, then start the
        background tasks. PartitionCountChanged: Redis holds a ledger of another BILLING_PARTITIONS."""
        self.operations.observer = self.metrics.observe_operation
        self.projector.on_batch = self.metrics.observe_projector_batch
        self.projector.on_conflict = self.metrics.observe_projector_conflicts
        self.ledger.route.on_short_wait = self.metrics.observe_short_wait
        self.operations.write_gate = self.sequence_guard.ensure_writable
        if self.reservation_sweeper is not None:
            self.reservation_sweeper.write_gate = self.sequence_guard.ensure_writable
        # Before anything reads or writes the ledger: its keys are laid out for one partition count. A Redis
        # down now is checked by the sequence guard, which refuses money writes until the count is confirmed.
        try:
            await self.ledger.claim_partition_count()
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            log.warning("could not check the partition count at start (%r); money writes wait for it", exc)
        await self.sequence_guard.start()
        if self.transit_recovery is not None:
            await self.transit_recovery.start()
        if self.reservation_sweeper is not None:
            await self.reservation_sweeper.start()
        if self.settings.projector_enabled:
            # The projector makes the MongoDB indexes before its first batch (retrying while MongoDB is down).
            await self.projector.start()
        if self.webhook_dispatcher is not None:
            self.webhook_dispatcher.on_delivered = self.metrics.observe_webhook_delivery
            self.webhook_dispatcher.on_failure = self.metrics.observe_webhook_failure
            self.webhooks.on_created = self.webhook_dispatcher.poke
            await self.webhook_dispatcher.start()

    async def stop(self) -> None:
        """Stop in reverse order, letting each part finish the work in hand; then close the stores opened here."""
        if self.webhook_dispatcher is not None:
            await self.webhook_dispatcher.stop()  # before the feed, whose waker it waits on
        await self.events.close()
        await self.projector.stop()
        if self.transit_recovery is not None:
            await self.transit_recovery.stop()
        if self.reservation_sweeper is not None:
            await self.reservation_sweeper.stop()
        await self.sequence_guard.stop()
        if self.owns_mongo:
            self.mongo.client.close()
        if self.owns_redis:
            await close_redis(self.redis)


async def bootstrap(
    settings: Settings, redis: RedisClient | None = None, mongo: MongoDatabase | None = None
) -> Context:
    """Build every component; `redis` and `mongo` replace the stores the settings name (tests pass fakes)."""
    from billing.infra.metrics import Metrics

    if settings.embedded and redis is None:
        log.warning(EMBEDDED_WARNING)
    owns_redis, owns_mongo = redis is None, mongo is None
    redis = redis if redis is not None else connect_redis(settings)
    mongo = mongo if mongo is not None else connect_mongo(settings)
    ledger = Ledger(
        redis,
        settings.redis_prefix,
        settings.idempotency_ttl_seconds,
        partitions=settings.partitions,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
        reservation_ttl_seconds=settings.reservation_ttl_seconds,
        closed_ttl_seconds=settings.reservation_closed_ttl_seconds,
        recognized_ttl_seconds=settings.reservation_recognized_ttl_seconds,
    )
    try:
        await ledger.load_scripts()
    except Exception as exc:  # Redis may be down at start; the library loads on the first missing function
        log.warning("could not load the Lua function library at start: %s", exc)
    metrics = Metrics()
    # History and feed cursors are signed with the service secret; without one they hold only in this process.
    secret = settings.secret or secrets.token_urlsafe(32)
    projector = Projector.from_settings(settings, redis, ledger.keys, LedgerStore(mongo))
    events = EventFeed(mongo, redis, ledger.keys, secret, redis if isinstance(redis, Redis) else connect_node(settings))
    webhook_store = WebhookStore(redis, ledger.keys)
    return Context(
        settings=settings,
        redis=redis,
        mongo=mongo,
        ledger=ledger,
        operations=MoneyOperations(ledger),
        auth=Authenticator(settings.tokens),
        metrics=metrics,
        request_observer=RequestObserver(metrics, settings.log_requests),
        history=History(mongo, ledger, secret),
        events=events,
        projector=projector,
        sequence_guard=SequenceGuard(redis, ledger.keys, LedgerStore(mongo), ledger.claim_partition_count),
        reports=Reports(mongo, settings, lag_probe=projector.lag),
        transit_recovery=TransitRecovery(ledger),
        reservation_sweeper=ReservationSweeper(ledger, every=settings.reservation_sweep_interval_ms / 1000),
        accounting=Accounting(mongo, ledger, settings),
        webhooks=Webhooks(webhook_store, events, settings.webhook_allow_private),
        webhook_dispatcher=WebhookDispatcher(webhook_store, events, HttpSender(settings.webhook_allow_private)),
        owns_redis=owns_redis,
        owns_mongo=owns_mongo,
    )
