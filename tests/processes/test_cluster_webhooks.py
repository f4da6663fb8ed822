"""Webhook deliveries with the ledger on a real Redis Cluster (16 partitions over 3 masters): the feed reads every
partition's watermark and stream on its own node, the leases live in their own slot, and two dispatchers hand the
webhooks over (one stops, one dies) while deposits go on; every event arrives once, in order, signed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from billing.bootstrap import Context, bootstrap
from billing.core.config import Settings
from tests.stores.test_webhook_delivery import two_dispatchers_share_the_webhooks
from tests.support.redis_cluster import LocalCluster, cluster_settings


@pytest.fixture
def settings(redis_cluster: LocalCluster, prefix: str, tmp_path: Path) -> Settings:
    return cluster_settings(redis_cluster, prefix, tmp_path, webhook_allow_private=True)  # a local receiver


@pytest.fixture
async def hooks(settings: Settings, mongo_db: Any) -> AsyncIterator[Context]:
    """The app's components on the cluster, without their own dispatcher: the scenario runs two of its own."""
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    assert context.webhook_dispatcher is not None
    await context.webhook_dispatcher.stop()
    yield context
    await context.stop()


async def test_two_dispatchers_deliver_every_event_once_in_order_on_a_cluster(hooks: Context) -> None:
    assert hooks.settings.redis_mode == "cluster"
    await two_dispatchers_share_the_webhooks(hooks)
