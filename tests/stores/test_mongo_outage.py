"""MongoDB down: money keeps moving (Redis only), history lags and then catches up, nothing lost or doubled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient

from billing.bootstrap import Context
from billing.core.config import Settings
from tests.support.api import Api
from tests.support.servers import MongoWireServer


@pytest.fixture
async def mongo_db(own_mongo: MongoWireServer) -> AsyncIterator[Any]:
    client = AsyncIOMotorClient(
        own_mongo.url, tz_aware=True, serverSelectionTimeoutMS=300, connectTimeoutMS=300, heartbeatFrequencyMS=500
    )
    yield client["billing_outage"]
    client.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_block_ms": 50})


async def history(ctx: Context) -> list[tuple[int, int]]:
    docs = await ctx.mongo.transactions.find({}).sort("_id", 1).to_list(None)
    return [(int(d["_id"]), int(d["amount"])) for d in docs]


async def test_deposits_go_on_while_mongodb_is_down_and_history_catches_up(
    api: Api, ctx: Context, own_mongo: MongoWireServer
) -> None:
    ids = []
    for i in range(1, 6):
        r = await api.deposit(1, f"{i}.00")
        assert r.status == 201
        ids.append(int(r.json["transaction"]["id"]))
    await ctx.projector.drain()
    assert await history(ctx) == [(txn_id, i * 100) for i, txn_id in zip(range(1, 6), ids, strict=True)]

    own_mongo.stop()
    for i in range(6, 26):
        r = await api.deposit(1 + i % 3, f"{i}.00")
        assert r.status == 201, r.body  # money only needs Redis
        ids.append(int(r.json["transaction"]["id"]))
    assert (await api.balance(1)).status == 200
    ready = await api.get("/readyz", token=None)
    assert ready.status == 503 and ready.json["checks"]["mongodb"] != "ok"
    assert ready.json["checks"]["outbox"]["entries"] == 20  # the lag, reported
    with pytest.raises(TimeoutError):
        await ctx.projector.drain(timeout=1.0)
    assert ctx.projector.failures > 0

    own_mongo.start()  # same port, same storage
    await ctx.projector.drain(timeout=30)
    expected = sorted((txn_id, i * 100) for i, txn_id in zip(range(1, 26), ids, strict=True))
    assert await history(ctx) == expected  # every transaction exactly once
    ready = await api.get("/readyz", token=None)
    assert ready.status == 200 and ready.json["checks"]["outbox"] == {"entries": 0, "oldest_age_seconds": 0.0}
