"""A Redis whose ledger sequence is behind MongoDB (emptied, or restored from an old snapshot) refuses money
writes until `billing rebuild` restores the sequence; then writes resume with fresh ids."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
from bson.int64 import Int64
from pymongo.errors import DuplicateKeyError

from billing.bootstrap import Context
from billing.core.config import MAX_PARTITIONS, Settings
from billing.projection.projector import Projector
from billing.projection.recovery import rebuild
from billing.projection.seq_guard import SequenceGuard
from billing.projection.store import LedgerStore
from tests.support.api import Api, problem
from tests.support.state import last_sequences, outbox_entries

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})


def guard(ctx: Context) -> SequenceGuard:
    return ctx.sequence_guard


async def seed(api: Api, ctx: Context) -> int:
    """Three deposits projected into MongoDB; the largest transaction id."""
    ids = []
    for amount in ("1.00", "2.00", "3.00"):
        r = await api.deposit(1, amount)
        assert r.status == 201
        ids.append(int(r.json["transaction"]["id"]))
    await Projector.from_context(ctx).drain()
    assert await LedgerStore(ctx.mongo).max_transaction_id() == max(ids)
    return max(ids)


async def assert_writes_refused(api: Api, ctx: Context) -> None:
    seq_before = await last_sequences(ctx.redis, ctx.ledger.keys)
    outbox_before = await outbox_entries(ctx.redis, ctx.ledger.keys)
    r = await api.deposit(2, "5.00", key="during-outage")
    problem(r, 503, "unavailable")
    assert "billing rebuild" in r.json["detail"] and r.headers.get("Retry-After")
    batch = await api.post(
        "/v1/batch", {"operations": [{"op": "deposit", "user_id": 2, "amount": "1.00"}]}, token="tok-payments"
    )
    problem(batch, 503, "unavailable")
    ready = await api.get("/readyz", token=None)
    assert ready.status == 503 and ready.json["checks"]["ledger_sequence"] != "ok"
    assert "billing rebuild" in ready.json["detail"]
    # a refusal changes nothing
    assert await last_sequences(ctx.redis, ctx.ledger.keys) == seq_before
    assert await outbox_entries(ctx.redis, ctx.ledger.keys) == outbox_before
    assert await ctx.ledger.balance(2) is None


async def test_a_healthy_ledger_is_not_refused(api: Api, ctx: Context) -> None:
    await seed(api, ctx)
    assert await guard(ctx).check() is None
    assert (await api.deposit(1, "1.00")).status == 201
    assert (await api.get("/readyz", token=None)).json["checks"]["ledger_sequence"] == "ok"


async def test_emptied_redis_refuses_writes_until_rebuild_then_ids_go_on(
    api: Api, ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    largest = await seed(api, ctx)
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)  # Redis lost everything; MongoDB still holds the ledger
    with caplog.at_level(logging.ERROR, logger="billing.ledger.scripts"):
        assert await guard(ctx).check() is not None
    assert any("billing rebuild" in rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR)
    await assert_writes_refused(api, ctx)

    await rebuild(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))
    assert await guard(ctx).tick() is None  # what the guard's background loop runs every second
    r = await api.deposit(1, "5.00", key="during-outage")
    assert r.status == 201 and int(r.json["transaction"]["id"]) == largest + MAX_PARTITIONS  # user 1's next id
    assert r.json["balance"]["available"] == "11.00"
    assert (await api.get("/readyz", token=None)).status == 200


async def test_redis_restored_from_an_old_snapshot_refuses_writes_until_forced_rebuild(api: Api, ctx: Context) -> None:
    largest = await seed(api, ctx)
    # The snapshot was taken after the first deposit: its seq is 1, its accounts still exist.
    await ctx.redis.hset(ctx.ledger.keys.meta(ctx.ledger.keys.partition_of(1)), "seq", "1")
    await ctx.redis.hset(ctx.ledger.keys.account(1), mapping={"available": "100", "reserved": "0"})
    assert await guard(ctx).check() is not None
    await assert_writes_refused(api, ctx)

    await rebuild(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), force=True)
    assert await guard(ctx).check() is None
    r = await api.deposit(1, "1.00")
    assert r.status == 201 and int(r.json["transaction"]["id"]) == largest + MAX_PARTITIONS
    assert r.json["balance"]["available"] == "7.00"
    await Projector.from_context(ctx).drain()
    assert await ctx.mongo.transactions.count_documents({}) == 4


async def test_the_check_at_start_refuses_before_the_first_request(ctx: Context) -> None:
    partition = ctx.ledger.keys.partition_of(1)
    top = 5 * MAX_PARTITIONS + partition  # user 1's fifth id, which this Redis never issued
    await ctx.mongo.transactions.insert_one({"_id": top, "user_id": 1, "type": "deposit", "amount": 1})
    await LedgerStore(ctx.mongo).raise_partition_tops({partition: top})
    fresh = SequenceGuard(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))
    await fresh.start()
    try:
        assert fresh.refusal is not None and "billing rebuild" in fresh.refusal
    finally:
        await fresh.stop()


async def test_each_tick_reads_redis_and_asks_mongodb_only_when_due_or_suspect(
    api: Api, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(api, ctx)
    checker = SequenceGuard(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))  # not yet checked
    asked: list[int] = []
    real = checker.store.largest_ids

    async def counted() -> dict[int, int]:
        asked.append(1)
        return await real()

    monkeypatch.setattr(checker.store, "largest_ids", counted)
    assert await checker.tick() is None and len(asked) == 1  # the first tick is a full check
    assert (await api.deposit(1, "1.00")).status == 201
    for _ in range(3):
        assert await checker.tick() is None
    assert len(asked) == 1  # seq only went forward: Redis alone
    assert await guard(ctx).tick() is None  # the service's own guard, as its loop does every second
    await ctx.redis.hset(ctx.ledger.keys.meta(ctx.ledger.keys.partition_of(1)), "seq", "1")  # an old snapshot
    assert await checker.tick() is not None and len(asked) == 2  # asked MongoDB at once
    assert await guard(ctx).tick() is not None  # and on its next tick
    await assert_writes_refused(api, ctx)


async def test_partition_tops_only_rise_under_concurrent_projectors(ctx: Context) -> None:
    """Batches raising the tops in any order (a replayed older batch among them) never lower one."""
    store = LedgerStore(ctx.mongo)
    batches = [{p: (n + 1) * MAX_PARTITIONS + p for p in range(p0, 16, 3)} for n in range(12) for p0 in range(3)]
    random.Random(7).shuffle(batches)  # larger tops before smaller ones: `$max`, not the last write, decides
    await asyncio.gather(*(store.raise_partition_tops(tops) for tops in batches))
    expected = {p: max(tops[p] for tops in batches if p in tops) for p in range(16)}
    assert await store.largest_ids() == expected
    await store.raise_partition_tops({p: MAX_PARTITIONS + p for p in range(16)})  # an older batch, replayed
    assert await store.largest_ids() == expected


async def test_a_racing_upsert_of_a_partition_top_is_raised_again(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two projectors upserting a new partition's top at once: MongoDB refuses the loser's insert with a duplicate
    key, and the loser raises the top once more (it may be the larger)."""
    store = LedgerStore(ctx.mongo)
    real = store.partition_tops.update_one
    refused: list[Any] = []

    async def first_one_loses(query: Any, update: Any, upsert: bool = False) -> Any:
        if not refused:
            refused.append(query)
            await real(query, {"$max": {"top": Int64(1)}}, upsert=True)  # the winner's insert, just now
            raise DuplicateKeyError("E11000 duplicate key error")
        return await real(query, update, upsert=upsert)

    monkeypatch.setattr(store.partition_tops, "update_one", first_one_loses)
    top = 3 * MAX_PARTITIONS + 5
    await store.raise_partition_tops({5: top})
    assert refused == [{"_id": 5}]
    assert await store.largest_ids() == {5: top}


class CountingTops(LedgerStore):
    """Counts the writes of partition tops that carry any, and fails the next `failures` of them."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.writes = 0
        self.failures = 0

    async def raise_partition_tops(self, tops: Any) -> None:
        if tops:
            self.writes += 1
            if self.failures:
                self.failures -= 1
                raise ConnectionError("MongoDB is down for a moment")
        await super().raise_partition_tops(tops)


async def test_a_busy_projector_writes_the_partition_tops_once_a_second_and_a_drain_leaves_them_written(
    api: Api, ctx: Context
) -> None:
    ids = []
    for n in range(1, 9):
        r = await api.deposit(1, f"{n}.00")
        assert r.status == 201
        ids.append(int(r.json["transaction"]["id"]))
    store = CountingTops(ctx.mongo)
    projector = Projector(ctx.redis, ctx.ledger.keys, store, batch=2)
    await projector.drain()
    assert projector.batches == 4
    assert store.writes == 2  # the first batch's (due at once), then the other three's together at the end
    partition = ctx.ledger.keys.partition_of(1)
    assert await store.largest_ids() == {partition: max(ids)}
    # A write that fails keeps its tops for the next one: nothing projected is left out of them.
    r = await api.deposit(1, "9.00")
    store.failures = 1
    await projector.drain()
    assert await store.largest_ids() == {partition: int(r.json["transaction"]["id"])}
