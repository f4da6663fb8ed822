"""Reconcile and rebuild with reservations that expire: an expired release is an ordinary release, a closed
reservation whose record expired is no mismatch, and rebuild restores deadlines, the expiry index, the expired
status and what is left of closed records' TTLs."""

from __future__ import annotations

from typing import Any

from billing.bootstrap import Context
from billing.ledger.expiry import ReservationSweeper
from billing.ledger.outcomes import Applied, Refused
from billing.projection.projector import Projector
from billing.projection.recovery import rebuild, reconcile
from billing.projection.store import LedgerStore
from tests.support.workload import deposit, run


async def check(ctx: Context) -> Any:
    """Reconcile, with a projector of its own (one made after a wipe finds the streams' groups missing and
    makes them)."""
    projector = Projector.from_context(ctx)
    return await reconcile(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), projector, drain_timeout=10)


async def reservations(ctx: Context) -> dict[str, Any]:
    """Every reservation hash with whether it has a TTL, and every expiry index."""
    keys = ctx.ledger.keys
    state: dict[str, Any] = {}
    async for key in ctx.redis.scan_iter(match=keys.reservation_pattern()):
        state[key.decode()] = (await ctx.redis.hgetall(key), await ctx.redis.ttl(key) > 0)
    for partition in keys.all():
        state[keys.expiry(partition)] = await ctx.redis.zrange(keys.expiry(partition), 0, -1, withscores=True)
    return state


async def test_rebuild_and_reconcile_know_expired_reservations(ctx: Context) -> None:
    assert ctx.reservation_sweeper is not None
    await ctx.reservation_sweeper.stop()
    await ctx.projector.stop()  # the test wipes Redis, streams included: its own projectors read them
    ledger, keys = ctx.ledger, ctx.ledger.keys
    assert isinstance(await deposit(ledger, 1, 100_000), Applied)
    for order, lifetime in ((1, 5), (2, 5), (3, 5), (4, 3_600), (5, 5)):
        assert isinstance(await run(ledger, ledger.reserve_call(1, 9, order, 1_000, None, None, lifetime)), Applied)
    assert isinstance(await run(ledger, ledger.recognize_call(1, 9, 2, 600)), Applied)
    assert isinstance(await run(ledger, ledger.cancel_call(1, 9, 3, None)), Applied)
    now = await ledger.partition_now(keys.partition_of(1))
    await ctx.redis.hset(keys.meta(keys.partition_of(1)), "clock", now + 6_000)  # orders 1 and 5 are past due
    assert await ReservationSweeper(ledger).run_once() == 2
    assert await run(ledger, ledger.cancel_call(1, 9, 5, None)) == Refused("reservation_expired")
    report = await check(ctx)
    assert report.ok, report.mismatches  # the expired releases are releases like the others
    assert (await ledger.reservation(1, 9, 1) or {})["status"] == "expired"
    before = await reservations(ctx)
    assert before[keys.expiry(keys.partition_of(1))] == [
        (b"1:9:4", float((await ledger.reservation(1, 9, 4) or {})["expires_at"]))
    ]

    # Redis lost: rebuild brings back every reservation as it was, the open one in the index, TTLs on closed ones
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)
    await rebuild(ctx.redis, keys, LedgerStore(ctx.mongo))
    assert await reservations(ctx) == before
    assert (await check(ctx)).ok
    # the open one still expires (its deadline came back with it), and the expired ones stay closed
    await ctx.redis.hset(keys.meta(keys.partition_of(1)), "clock", now + 3_601_000)
    assert await ReservationSweeper(ledger).run_once() == 1
    assert await run(ledger, ledger.recognize_call(1, 9, 1, 1_000)) == Refused("reservation_expired")

    # closed records whose TTL has run out are not restored, and their absence is no mismatch
    await Projector.from_context(ctx).drain()
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)
    await rebuild(ctx.redis, keys, LedgerStore(ctx.mongo), closed_ttl_seconds=1, recognized_ttl_seconds=1)
    assert await ledger.reservation(1, 9, 1) is None and await ledger.reservation(1, 9, 2) is None
    report = await check(ctx)
    assert report.ok, report.mismatches
    assert isinstance(await run(ledger, ledger.reserve_call(1, 9, 1, 2_000, None, None)), Applied)  # afresh
