"""The event feed stops at each partition's projection watermark: a batch projected late is never skipped by a
feed walk, and partitions do not wait for each other."""

from __future__ import annotations

from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import Settings
from tests.stores.test_watermark import hold_a_batch, projector, seq
from tests.support.api import Api
from tests.support.workload import deposit

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests drive their own projectors."""
    return settings.model_copy(update={"projector_enabled": False})


async def walk(api: Api, after: str | None, limit: str = "2") -> tuple[list[dict[str, Any]], str]:
    events: list[dict[str, Any]] = []
    while True:
        r = await api.get("/v1/events?limit=" + limit + (f"&after={after}" if after else ""), token="tok-events")
        assert r.status == 200, r.body
        after = r.json["next"]
        if not r.json["items"]:
            return events, after
        events += r.json["items"]


async def test_a_feed_walk_never_skips_a_batch_projected_late(api: Api, ctx: Context) -> None:
    other = next(u for u in range(2, 400) if ctx.ledger.keys.partition_of(u) != ctx.ledger.keys.partition_of(1))
    for n in range(1, 6):
        await deposit(ctx.ledger, 1, n * 100)
    await deposit(ctx.ledger, other, 100)
    await projector(ctx).drain()
    for n in range(6, 12):
        await deposit(ctx.ledger, 1, n * 100)
    held, task = await hold_a_batch(ctx)  # user 1's 6..8 are read by a projector and not yet in MongoDB; 9..11 are

    assert await ctx.mongo.transactions.count_documents({"user_id": 1}) == 8  # 9..11 landed, 6..8 did not

    events, after = await walk(api, None)
    users = [(e["data"]["user_id"], seq(e["id"])) for e in events]
    # Up to user 1's watermark only (9..11 are in MongoDB, beyond it); the other partition is not held back.
    assert sorted(users) == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (other, 1)]
    assert [n for user, n in users if user == 1] == [1, 2, 3, 4, 5]
    held.release.set()
    await task
    await projector(ctx).drain()
    more, _ = await walk(api, after)
    assert [(e["data"]["user_id"], seq(e["id"])) for e in more] == [(1, n) for n in range(6, 12)]
    whole, _ = await walk(api, None, limit="100")
    assert sorted(e["id"] for e in whole) == sorted(e["id"] for e in events + more)


async def test_nothing_is_delivered_before_a_watermark_is_published(api: Api, ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 100)
    r = await api.get("/v1/events", token="tok-events")
    assert r.status == 200 and r.json["items"] == []
    await projector(ctx).drain()
    r = await api.get(f"/v1/events?after={r.json['next']}&wait=5", token="tok-events")
    assert [e["data"]["user_id"] for e in r.json["items"]] == [1]
