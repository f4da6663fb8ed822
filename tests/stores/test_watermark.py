"""History pages stop at the projection watermark, so a batch projected late is never skipped by a walk."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlencode

import pytest

from billing.bootstrap import Context
from billing.core.config import MAX_PARTITIONS, Settings
from billing.ledger.outcomes import Applied
from billing.projection.projector import GROUP, Projector
from billing.projection.store import LedgerStore
from billing.projection.watermark import SCAN, ProjectionWatermark, advance_all
from tests.support.api import Api
from tests.support.ledger_docs import SORTS
from tests.support.workload import deposit

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests drive their own projectors."""
    return settings.model_copy(update={"projector_enabled": False})


class HeldStore(LedgerStore):
    """A batch that lands in MongoDB out of order: its last `early` documents at once, the others once the test
    lets them go (an insert_many with ordered=False promises no order either)."""

    def __init__(self, db: Any, early: int = 0) -> None:
        super().__init__(db)
        self.early = early
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        cut = max(0, len(docs) - self.early)
        first = await super().insert_transactions(docs[cut:])
        self.entered.set()
        await self.release.wait()
        rest = await super().insert_transactions(docs[:cut])
        return first[0] + rest[0], first[1] + rest[1]


def projector(ctx: Context, store: LedgerStore | None = None, **kwargs: Any) -> Projector:
    options = {"batch": 3, "block_ms": 50, "claim_idle_ms": 10_000, **kwargs}
    return Projector(ctx.redis, ctx.ledger.keys, store or LedgerStore(ctx.mongo), **options)


async def page(api: Api, user_id: int, **params: str) -> dict[str, Any]:
    r = await api.get(f"/v1/users/{user_id}/transactions?{urlencode(params)}", token="tok-support")
    assert r.status == 200, r.body
    return r.json


# Every transaction here is user 1's, so of one partition: ids are seq * 1024 + that partition, and the tests
# speak of seqs (1, 2, 3 ...).
def seq(txn_id: int) -> int:
    return txn_id // MAX_PARTITIONS


def watermark(p: Projector, ctx: Context) -> ProjectionWatermark:
    return p.watermarks[ctx.ledger.keys.outbox(ctx.ledger.keys.partition_of(1))]


async def projected_ids(ctx: Context) -> list[int]:
    """The seqs of the transactions in MongoDB, in order."""
    cursor = ctx.mongo.transactions.find({}, {"_id": 1}).sort("_id", 1)
    return [seq(int(d["_id"])) for d in await cursor.to_list(None)]


async def hold_a_batch(ctx: Context) -> tuple[HeldStore, asyncio.Task[None]]:
    """A projector takes the next 6 entries: the last 3 land in MongoDB, the first 3 wait for the test."""
    held = HeldStore(ctx.mongo, early=3)
    task = asyncio.create_task(projector(ctx, held, batch=6).drain(timeout=60))
    await asyncio.wait_for(held.entered.wait(), 10)
    return held, task


async def share_partitions(ctx: Context, holder: Projector, other: Projector) -> None:
    """Two projectors alive split the partitions: `other` registers first and takes them all, gives back the
    upper half once `holder` is alive too, and `holder` takes those (user 1's partition among them)."""
    for p in (other, holder, other, holder):
        await p.refresh_leases()
    assert ctx.ledger.keys.partition_of(1) in holder.leases.owned
    assert holder.leases.owned.isdisjoint(other.leases.owned)


@pytest.mark.parametrize(("sort", "order"), SORTS)
async def test_a_walk_never_skips_a_batch_projected_late(api: Api, ctx: Context, sort: str, order: str) -> None:
    # Amounts rise with ids, so both sorts order the transactions as their ids.
    for n in range(1, 6):
        await deposit(ctx.ledger, 1, n * 100)
    await projector(ctx).drain()
    for n in range(6, 12):
        await deposit(ctx.ledger, 1, n * 100)
    held, task = await hold_a_batch(ctx)
    assert await projected_ids(ctx) == [1, 2, 3, 4, 5, 9, 10, 11]  # 6..8 are late (one batch, out of order)

    # A client walks while 6..8 are missing from MongoDB: two pages, then they land, then it goes on.
    walk, cursor = await follow(api, sort, order, None, pages=2)
    held.release.set()
    await task  # 6..8 land now, behind ids the walk may already have passed
    assert await projected_ids(ctx) == list(range(1, 12))
    if cursor:
        walk += (await follow(api, sort, order, cursor))[0]

    everything = list(range(1, 12)) if order == "asc" else list(range(11, 0, -1))
    low, high = sorted((walk[0], walk[-1]))
    assert walk == [i for i in everything if low <= i <= high], "an item was skipped or repeated"
    assert (await follow(api, sort, order, None))[0] == everything  # a walk begun now sees the late ones too


async def follow(api: Api, sort: str, order: str, cursor: str | None, pages: int = 100) -> tuple[list[int], str | None]:
    """Up to `pages` pages of 4 following next_cursor: the ids seen and the cursor left to follow."""
    ids: list[int] = []
    for _ in range(pages):
        extra = {"cursor": cursor} if cursor else {}
        answer = await page(api, 1, sort=sort, order=order, limit="4", **extra)
        ids += [seq(item["id"]) for item in answer["items"]]
        cursor = answer["next_cursor"]
        if not cursor:
            break
    return ids, cursor


async def test_the_watermark_passes_ids_that_never_arrive(api: Api, ctx: Context) -> None:
    keys = ctx.ledger.keys
    partition = keys.partition_of(1)
    await deposit(ctx.ledger, 1, 100)  # seq 1
    await ctx.redis.hincrby(keys.meta(partition), "seq", 1)  # seq 2: taken by a script that failed before its XADD
    await ctx.redis.hincrby(keys.meta(partition), "seq", 1)  # seq 3: in an entry nobody can read (dead-lettered)
    await ctx.redis.xadd(keys.outbox(partition), {"txns": f'[{{"id": "{3 * MAX_PARTITIONS + partition}"}}]'})
    await deposit(ctx.ledger, 1, 400)  # seq 4
    p = projector(ctx)
    await p.drain()
    assert p.poisoned == 1
    assert seq(await watermark(p, ctx).read() or 0) == 4
    assert [seq(item["id"]) for item in (await page(api, 1))["items"]] == [4, 1]
    await ctx.redis.hincrby(keys.meta(partition), "seq", 1)  # a gap with nothing after it
    await p.drain()
    assert await watermark(p, ctx).read() == 5 * MAX_PARTITIONS + partition


async def test_a_crashed_consumer_holds_the_watermark_until_its_batch_is_claimed(api: Api, ctx: Context) -> None:
    for n in range(1, 7):
        await deposit(ctx.ledger, 1, n * 100)
    doomed = HeldStore(ctx.mongo, early=3)
    dead = projector(ctx, doomed, batch=6)
    task = asyncio.create_task(dead.drain(timeout=60))
    await asyncio.wait_for(doomed.entered.wait(), 10)  # 4..6 are in MongoDB, 1..3 not yet
    task.cancel()  # the projector dies with its batch unacknowledged
    with contextlib.suppress(asyncio.CancelledError):
        await task
    watching = projector(ctx)
    first = MAX_PARTITIONS + ctx.ledger.keys.partition_of(1)  # the id of seq 1
    assert await watermark(watching, ctx).advance() == first - 1
    assert (await page(api, 1))["items"] == []  # 4..6 wait for 1..3 rather than run ahead of them
    await dead.leases.release_all()  # its leases run out (what expiry does, at once)
    rescuer = projector(ctx)
    await rescuer.drain()
    assert rescuer.entries_claimed == 6  # the dead projector's whole batch, before anything new
    assert seq(await watermark(rescuer, ctx).read() or 0) == 6
    assert [seq(item["id"]) for item in (await page(api, 1))["items"]] == [6, 5, 4, 3, 2, 1]


async def test_watermark_is_monotonic(ctx: Context) -> None:
    w = watermark(projector(ctx), ctx)
    assert await w.read() is None
    assert await w.publish(7) == 7
    assert await w.publish(3) == 7  # a stale, lower computation never lowers it
    assert await w.publish(12) == 12


async def test_one_advance_of_every_partition_computes_each_partition_on_its_own(ctx: Context) -> None:
    keys = ctx.ledger.keys
    held_partition = keys.partition_of(1)
    for n in range(1, 4):
        await deposit(ctx.ledger, 1, n * 100)
    held = HeldStore(ctx.mongo)
    holder, rest = projector(ctx, held, batch=1), projector(ctx)
    await share_partitions(ctx, holder, rest)
    task = asyncio.create_task(holder.drain(timeout=60))  # holds user 1's first deposit
    await asyncio.wait_for(held.entered.wait(), 10)
    others = [u for u in range(2, 400) if keys.partition_of(u) in rest.leases.owned][:40]
    for user in others:
        await deposit(ctx.ledger, user, 100)
    with pytest.raises(TimeoutError):  # projects everything but the held entry
        await rest.drain(timeout=1)
    # In one more partition, more than SCAN entries without transactions come before an undelivered deposit.
    late_user = others[0]
    late = keys.partition_of(late_user)
    for _ in range(SCAN + 3):
        await ctx.redis.xadd(keys.outbox(late), {"services": "{}"})
    outcome = await deposit(ctx.ledger, late_user, 100)
    assert isinstance(outcome, Applied)
    late_id = int(outcome.body["transaction"]["id"])

    marks = list(projector(ctx).watermarks.values())
    stored = dict(zip([w.partition for w in marks], await advance_all(ctx.redis, marks), strict=True))
    assert stored[held_partition] == MAX_PARTITIONS + held_partition - 1  # below user 1's first id
    assert stored[late] == late_id - 1
    for p in {keys.partition_of(u) for u in others} - {late}:
        assert stored[p] == int(await ctx.redis.hget(keys.meta(p), "seq")) * MAX_PARTITIONS + p
    held.release.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class DownAfterOne(LedgerStore):
    """A MongoDB that takes one insert, then is down until the test brings it back."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.inserts = 0
        self.down = True

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        self.inserts += 1
        if self.inserts > 1 and self.down:
            raise ConnectionError("MongoDB is down")
        return await super().insert_transactions(docs)


async def test_a_read_advances_the_watermarks_of_what_it_projected_once_even_when_a_batch_fails(
    api: Api, ctx: Context
) -> None:
    keys = ctx.ledger.keys
    first_user = 1
    second_user = next(u for u in range(2, 400) if keys.partition_of(u) != keys.partition_of(first_user))
    for user in (first_user, second_user):
        for n in (1, 2):
            await deposit(ctx.ledger, user, n * 100)
    store = DownAfterOne(ctx.mongo)
    p = projector(ctx, store, batch=2)  # one read of both streams, two batches: the second one fails
    with pytest.raises(TimeoutError):
        await p.drain(timeout=0.3)
    marks = {w.partition: w for w in p.watermarks.values()}
    used = [keys.partition_of(first_user), keys.partition_of(second_user)]
    (done,) = [part for part in used if (await ctx.redis.xpending(keys.outbox(part), GROUP))["pending"] == 0]
    (failed,) = set(used) - {done}
    seq_of = {part: int(await ctx.redis.hget(keys.meta(part), "seq")) for part in (done, failed)}
    # the partition whose batch MongoDB took is visible up to its last id, the other not past what it holds
    assert await marks[done].read() == seq_of[done] * MAX_PARTITIONS + done
    assert (await marks[failed].read() or 0) < MAX_PARTITIONS + failed
    store.down = False  # MongoDB is back
    await p.drain()
    assert await marks[failed].read() == seq_of[failed] * MAX_PARTITIONS + failed
    for user in (first_user, second_user):
        assert len((await page(api, user))["items"]) == 2
