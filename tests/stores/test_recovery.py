"""reconcile and rebuild on mongomock and SecantusDB, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import MAX_PARTITIONS, Settings
from billing.ledger.outcomes import Applied, Refused, Unchanged
from billing.projection.projector import Projector
from billing.projection.recovery import RedisNotEmpty, rebuild, reconcile
from billing.projection.store import LedgerStore
from tests.support.workload import deposit, mixed_workload, run

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)

SIGN = {  # written out independently of billing.projection.recovery: how each type moves (available, reserved)
    "deposit": (1, 0),
    "transfer_in": (1, 0),
    "withdrawal": (-1, 0),
    "transfer_out": (-1, 0),
    "reserve": (-1, 1),
    "charge": (0, -1),
    "release": (1, -1),
    "refund": (1, 0),
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})


def parts(ctx: Context) -> tuple[Any, Any, LedgerStore, Projector]:
    return ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), Projector.from_context(ctx)


async def check(ctx: Context):
    redis, keys, store, projector = parts(ctx)
    return await reconcile(redis, keys, store, projector, drain_timeout=10)


async def redis_state(ctx: Context) -> dict[str, Any]:
    """Every key of the test's prefix but the streams, idempotency records and transfer markers, the
    partitions' meta and history watermarks and the partition count: name -> hash; the partitions' catalogs as the catalog they make."""
    state: dict[str, Any] = {"catalog": await ctx.ledger.services()}
    skipped = (":outbox", ":meta", ":projected", ":services")
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        name = key.decode()
        markers = (":idem:", ":credited:", ":settled:")  # a request's records, not the ledger's state
        if name.endswith(skipped) or any(m in name for m in markers) or name == ctx.ledger.keys.partition_count:
            continue
        if name.endswith(":expiry"):  # an expiry index
            state[name] = await ctx.redis.zrange(name, 0, -1, withscores=True)
            continue
        value = await ctx.redis.hgetall(name)
        if name.endswith(":totals"):  # a total of 0 and one never written mean the same
            value = {k: v for k, v in value.items() if v != b"0"}
        # and whether the key expires (a closed reservation's record does)
        state[name] = (value, await ctx.redis.ttl(name) > 0)
    return state


async def wipe(ctx: Context) -> None:
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)


async def test_each_accounts_ledger_sums_to_its_balance_after_a_concurrent_mixed_workload(ctx: Context) -> None:
    seed = random.randrange(1 << 30)
    workers = [mixed_workload(ctx.ledger, random.Random(seed + i), 60) for i in range(4)]
    statuses = await asyncio.gather(*workers)
    assert sum(n for s in statuses for label, n in s.items() if label.endswith((":applied", ":unchanged"))) > 100, seed
    await Projector.from_context(ctx).drain(timeout=10)
    sums: dict[int, list[int]] = {}
    async for doc in ctx.mongo.transactions.find({}):
        da, dr = SIGN[doc["type"]]
        acc = sums.setdefault(int(doc["user_id"]), [0, 0])
        acc[0] += da * int(doc["amount"])
        acc[1] += dr * int(doc["amount"])
    assert sums, seed
    for user_id, (available, reserved) in sums.items():
        assert await ctx.ledger.balance(user_id) == (available, reserved), (seed, user_id)
    report = await check(ctx)
    assert report.ok, (seed, [str(m) for m in report.mismatches])
    assert report.accounts == len(sums) and report.transactions == await ctx.mongo.transactions.count_documents({})


async def test_reconcile_is_exact_while_money_keeps_moving(ctx: Context) -> None:
    await mixed_workload(ctx.ledger, random.Random(7), 80)
    traffic = asyncio.create_task(mixed_workload(ctx.ledger, random.Random(8), 150))
    try:
        report = await check(ctx)
    finally:
        await traffic
    assert report.ok, [str(m) for m in report.mismatches]
    assert (await check(ctx)).ok


async def test_reconcile_reports_a_tampered_balance(ctx: Context) -> None:
    await mixed_workload(ctx.ledger, random.Random(1), 60)
    await deposit(ctx.ledger, 3, 1_000)
    assert (await check(ctx)).ok
    await ctx.redis.hincrby(ctx.ledger.keys.account(3), "available", 1)
    report = await check(ctx)
    assert not report.ok
    assert [(m.kind, m.subject) for m in report.mismatches] == [("account", "user 3 (available, reserved)")]
    available, reserved = await ctx.ledger.balance(3)
    assert report.mismatches[0].redis == (available, reserved)
    assert report.mismatches[0].ledger == (available - 1, reserved)


async def test_reconcile_reports_reservations_and_accounts_that_disagree(ctx: Context) -> None:
    ledger = ctx.ledger
    await deposit(ledger, 1, 10_000)
    await deposit(ledger, 2, 500)
    assert isinstance(await run(ledger, ledger.reserve_call(1, 5, 77, 4_000, "Доставка", None)), Applied)
    await ctx.redis.hset(ledger.keys.reservation(1, 5, 77), "status", "cancelled")  # no money moved
    await ctx.redis.delete(ledger.keys.account(2))
    partition = ledger.keys.partition_of(1)
    await ctx.redis.hincrby(ledger.keys.totals(partition), "deposited", 5)
    report = await check(ctx)
    found = {(m.kind, m.subject) for m in report.mismatches}
    assert found == {
        ("reservation", "reservation user 1 service 5 order 77 open amount"),
        ("account", "user 2 missing in Redis"),
        ("totals", f"partition {partition} deposited"),
    }


async def test_reconcile_counts_refunds(ctx: Context) -> None:
    ledger, keys = ctx.ledger, ctx.ledger.keys
    await deposit(ledger, 1, 10_000)
    assert isinstance(await run(ledger, ledger.reserve_call(1, 5, 77, 4_000, "Доставка", None)), Applied)
    assert isinstance(await run(ledger, ledger.recognize_call(1, 5, 77, 3_000)), Applied)
    for amount in (1_000, 500):
        assert isinstance(await run(ledger, ledger.refund_call(1, 5, 77, amount, None)), Applied)
    report = await check(ctx)
    assert report.ok, [str(m) for m in report.mismatches]
    assert await ledger.balance(1) == (10_000 - 3_000 + 1_500, 0)
    partition = keys.partition_of(1)
    # a reservation whose refunded amount, or a partition whose refunded total, is not the ledger's refunds
    await ctx.redis.hset(keys.reservation(1, 5, 77), "refunded_amount", "1499")
    await ctx.redis.hincrby(keys.totals(partition), "refunded", 1)
    mismatches = {(m.kind, m.subject): (m.redis, m.ledger) for m in (await check(ctx)).mismatches}
    assert mismatches == {
        ("reservation", "reservation user 1 service 5 order 77 refunded"): (1_499, 1_500),
        ("totals", f"partition {partition} refunded"): (1_501, 1_500),
    }
    # money given back without a refund in the ledger
    await ctx.redis.hset(keys.reservation(1, 5, 77), "refunded_amount", "1500")
    await ctx.redis.hincrby(keys.totals(partition), "refunded", -1)
    await ctx.redis.hincrby(keys.account(1), "available", 1)
    assert [(m.kind, m.subject) for m in (await check(ctx)).mismatches] == [("account", "user 1 (available, reserved)")]


async def test_reconcile_checks_the_transfers_between_partitions(ctx: Context) -> None:
    ledger, keys = ctx.ledger, ctx.ledger.keys
    sender, recipient = 1, 2
    assert keys.partition_of(sender) != keys.partition_of(recipient)
    await deposit(ledger, sender, 10_000)
    assert isinstance(await run(ledger, ledger.transfer_call(sender, recipient, 2_500, None)), Applied)
    assert (await check(ctx)).ok
    # transfers_in of the recipient's partition no longer matches the ledger, nor the sender's transfers_out
    await ctx.redis.hincrby(keys.totals(keys.partition_of(recipient)), "transfers_in", 1)
    found = {(m.kind, m.subject) for m in (await check(ctx)).mismatches}
    assert found == {
        ("totals", f"partition {keys.partition_of(recipient)} transfers_in"),
        ("totals", "transfers_in vs transfers_out of all partitions"),
    }


async def test_rebuild_restores_redis_from_the_ledger(ctx: Context) -> None:
    ledger = ctx.ledger
    await mixed_workload(ledger, random.Random(3), 120)
    await deposit(ledger, 1, 100_000)
    assert isinstance(await run(ledger, ledger.reserve_call(1, 9, 900, 3_000, "Хостинг", None)), Applied)
    assert isinstance(await run(ledger, ledger.reserve_call(1, 9, 901, 2_000, None, None)), Applied)
    assert isinstance(await run(ledger, ledger.recognize_call(1, 9, 901, 1_500)), Applied)
    assert isinstance(await run(ledger, ledger.refund_call(1, 9, 901, 400, "damaged")), Applied)
    assert isinstance(await ledger.set_service(9, "Хостинг Pro"), Applied)
    projector = Projector.from_context(ctx)
    await projector.drain()
    before = await redis_state(ctx)
    partition = ledger.keys.partition_of(1)
    seq_before = int(await ctx.redis.hget(ledger.keys.meta(partition), "seq"))
    next_id = (seq_before + 1) * MAX_PARTITIONS + partition
    assert (await check(ctx)).ok

    await wipe(ctx)
    assert await ledger.balance(1) is None
    report = await rebuild(ctx.redis, ledger.keys, LedgerStore(ctx.mongo))
    assert int(await ctx.redis.hget(ledger.keys.meta(partition), "seq")) == seq_before
    assert report.open_reservations >= 1
    assert await redis_state(ctx) == before  # balances, every reservation, catalog, totals: as they were
    assert (await check(ctx)).ok

    # a replayed reservation answers as before, a closed order stays reserved-once, an open one recognizes
    replay = await run(ledger, ledger.reserve_call(1, 9, 900, 3_000, "Хостинг Pro", None))
    assert isinstance(replay, Unchanged) and replay.body["reservation"]["status"] == "reserved"
    conflict = await run(ledger, ledger.reserve_call(1, 9, 900, 3_001, None, None))
    assert conflict == Refused("reservation_conflict")
    closed = await run(ledger, ledger.reserve_call(1, 9, 901, 2_000, None, None))
    assert isinstance(closed, Unchanged) and closed.body["reservation"]["status"] == "recognized"
    again = await run(ledger, ledger.recognize_call(1, 9, 901, 1_500))
    assert isinstance(again, Unchanged) and "transaction" not in again.body
    assert again.body["reservation"]["refunded_amount"] == "400"  # the refund came back with the reservation
    assert await run(ledger, ledger.refund_call(1, 9, 901, 1_101, None)) == Refused("refund_exceeds_charge")
    assert isinstance(await run(ledger, ledger.refund_call(1, 9, 901, 1_100, None)), Applied)
    recognized = await run(ledger, ledger.recognize_call(1, 9, 900, 3_000))
    assert isinstance(recognized, Applied) and recognized.body["transaction"]["service_name"] == "Хостинг Pro"
    assert int(recognized.body["transaction"]["id"]) == next_id + MAX_PARTITIONS  # ids go on, never repeat
    await projector.drain()
    assert await ctx.mongo.transactions.count_documents({"_id": {"$in": [next_id, next_id + MAX_PARTITIONS]}}) == 2
    assert (await check(ctx)).ok


async def test_rebuild_refuses_a_redis_with_accounts_unless_forced(ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 700)
    await deposit(ctx.ledger, 2, 300)
    await Projector.from_context(ctx).drain()
    store = LedgerStore(ctx.mongo)
    with pytest.raises(RedisNotEmpty):
        await rebuild(ctx.redis, ctx.ledger.keys, store)
    await ctx.redis.hset(ctx.ledger.keys.account(1), "available", "999999")
    await ctx.redis.hset(ctx.ledger.keys.account(55), mapping={"available": "1", "reserved": "0"})
    report = await rebuild(ctx.redis, ctx.ledger.keys, store, force=True)
    assert report.accounts == 2
    assert await ctx.ledger.balance(1) == (700, 0) and await ctx.ledger.balance(55) is None
    assert (await check(ctx)).ok


async def test_rebuild_of_an_empty_ledger_writes_no_accounts(ctx: Context) -> None:
    report = await rebuild(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))
    assert (report.accounts, report.reservations, report.seq) == (0, 0, 0)
    assert (await check(ctx)).ok


class Steps:
    """A progress callback that keeps what it was told: step -> [(done, total), ...]."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[int, int | None]]] = {}

    def __call__(self, step: str, done: int, total: int | None) -> None:
        self.seen.setdefault(step, []).append((done, total))

    def last(self, step: str) -> tuple[int, int | None]:
        return self.seen[step][-1]

    def counts_only_up(self) -> bool:
        return all(
            [done for done, _ in calls] == sorted(done for done, _ in calls)
            and all(total is None or done <= total for done, total in calls)
            for calls in self.seen.values()
        )


async def test_reconcile_and_rebuild_report_their_progress(ctx: Context) -> None:
    for user_id in (1, 2, 3):
        await deposit(ctx.ledger, user_id, 1_000)
    assert isinstance(await run(ctx.ledger, ctx.ledger.reserve_call(1, 9, 900, 300, None, None)), Applied)
    redis, keys, store, projector = parts(ctx)

    steps = Steps()
    assert (await reconcile(redis, keys, store, projector, drain_timeout=10, progress=steps)).ok
    assert steps.last("read accounts from Redis") == (3, 3)
    assert steps.last("read reservations from Redis") == (1, 1)
    assert steps.last("read the MongoDB ledger (queries)") == (3, 3)
    assert steps.last("compare accounts") == (3, 3) and steps.last("compare reservations") == (1, 1)
    assert steps.counts_only_up()

    steps = Steps()
    await rebuild(redis, keys, store, force=True, progress=steps)
    assert steps.last("clear Redis (keys deleted)") == (4, 4)  # three accounts, one reservation
    assert steps.last("write accounts to Redis") == (3, 3)
    assert steps.last("write reservations to Redis") == (1, 1)
    assert steps.counts_only_up()
    assert (await check(ctx)).ok
