"""The sweeper against recognize and cancel on the same reservations at their deadline, on a real redis-server.

Round after round, reservations are made, then recognized or cancelled, each call at a random moment within a few
ms, while sweepers run and, at a random moment among those calls, every partition's clock jumps past their deadlines (a partition's clock never
goes back, lua/_prelude.lua clock(), so from then on every script sees them due). Each reservation is closed by
exactly one of them: recognized or cancelled when that call ran first, else expired, released once (by a sweeper
or by the late call itself, which answers reservation_expired) - never two of those, and money is conserved.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from billing.ledger.expiry import ReservationSweeper
from billing.ledger.outcomes import Applied, Outcome, Refused
from billing.ledger.scripts import Ledger
from tests.support.servers import RedisServer
from tests.support.workload import deposit, run

ROUNDS = 15
PER_ROUND = 200  # 3,000 races in all
USERS = 40
LIFETIME = 3_600  # seconds: far beyond the test, reached by raising the clocks


@pytest.fixture
async def real_redis(redis_server: RedisServer) -> Any:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def raise_clocks(ledger: Ledger, ms: int) -> None:
    pipe = ledger.redis.pipeline(transaction=False)
    for partition in ledger.keys.all():
        pipe.hset(ledger.keys.meta(partition), "clock", ms)
    await pipe.execute()


async def outbox_txns(ledger: Ledger) -> list[dict[str, Any]]:
    txns = []
    for partition in ledger.keys.all():
        for _id, fields in await ledger.redis.xrange(ledger.keys.outbox(partition)):
            txns.extend(orjson.loads(fields[b"txns"]))
    return txns


async def test_exactly_one_of_the_sweeper_and_recognize_or_cancel_closes_each_reservation(
    real_redis: Redis, prefix: str
) -> None:
    ledger = Ledger(real_redis, prefix, 90_000)
    await ledger.load_scripts()
    sweepers = [ReservationSweeper(ledger), ReservationSweeper(ledger)]
    rng = random.Random(15)
    for user in range(1, USERS + 1):
        assert isinstance(await deposit(ledger, user, 10**10), Applied)
    now = max([await ledger.partition_now(p) for p in ledger.keys.all()])
    await raise_clocks(ledger, now)
    answers: dict[tuple[int, int, int], tuple[str, Outcome]] = {}
    order = 0
    for _ in range(ROUNDS):
        refs = []
        for _ in range(PER_ROUND):
            order += 1
            refs.append((rng.randint(1, USERS), rng.randint(1, 3), order))
        reserved = await asyncio.gather(
            *(run(ledger, ledger.reserve_call(*ref, 1_000 + ref[2], None, None, LIFETIME)) for ref in refs)
        )
        assert all(isinstance(outcome, Applied) for outcome in reserved)
        now += LIFETIME * 1000 + 1_000  # past every deadline of the round
        calls = {ref: rng.choice(["recognize", "cancel"]) for ref in refs}
        done = asyncio.Event()

        async def close(ref: tuple[int, int, int], call: str, delay: float) -> None:
            await asyncio.sleep(delay)  # the calls spread over the moments the deadline may pass at
            amount = 1_000 + ref[2]
            script = ledger.recognize_call(*ref, amount // 2) if call == "recognize" else ledger.cancel_call(*ref, None)
            answers[ref] = (call, await run(ledger, script))

        async def deadline_passes(at_ms: int) -> None:
            await asyncio.sleep(rng.uniform(0, 0.004))
            await raise_clocks(ledger, at_ms)

        async def sweep(sweeper: ReservationSweeper, done: asyncio.Event = done) -> None:
            while not done.is_set():
                await sweeper.run_once()
                await asyncio.sleep(0)

        sweeping = [asyncio.create_task(sweep(s)) for s in sweepers]
        delays = {ref: rng.uniform(0, 0.004) for ref in calls}
        await asyncio.gather(deadline_passes(now), *(close(ref, call, delays[ref]) for ref, call in calls.items()))
        done.set()
        await asyncio.gather(*sweeping)
        for sweeper in sweepers:
            await sweeper.run_once()  # whatever is left due

    # Each reservation: exactly the transactions of the one call that closed it.
    by_ref: dict[tuple[int, int, int], list[dict[str, Any]]] = defaultdict(list)
    for txn in await outbox_txns(ledger):
        if "order_id" in txn:
            by_ref[(int(txn["user_id"]), int(txn["service_id"]), int(txn["order_id"]))].append(txn)
    fates: Counter[str] = Counter()
    for ref, (call, outcome) in answers.items():
        kinds = [(t["type"], t.get("reason")) for t in by_ref[ref]]
        stored = await ledger.reservation(*ref)
        assert stored is not None
        if isinstance(outcome, Applied):
            closing = [("charge", None), ("release", None)] if call == "recognize" else [("release", None)]
            assert kinds == [("reserve", None), *closing], (ref, call, kinds)
            assert stored["status"] == ("recognized" if call == "recognize" else "cancelled")
            fates[call] += 1
        else:
            assert outcome == Refused("reservation_expired"), (ref, call, outcome)
            assert kinds == [("reserve", None), ("release", "expired")], (ref, call, kinds)
            assert stored["status"] == "expired"
            fates["expired"] += 1
    assert len(answers) == ROUNDS * PER_ROUND
    assert fates["expired"] > 0 and fates["recognize"] + fates["cancel"] > 0, fates
    assert sum(s.released for s in sweepers) <= fates["expired"]  # the late calls released the others

    # Money: nothing left reserved, every kopeck is available or revenue.
    balances = await ledger.balances(list(range(1, USERS + 1)))
    assert all(b is not None and b[1] == 0 for b in balances)
    totals = await ledger.totals()
    held = sum(b[0] for b in balances if b is not None)
    assert held == totals["deposited"] - totals.get("revenue", 0)
    assert totals.get("revenue", 0) == sum(
        (1_000 + r[2]) // 2 for r, (c, o) in answers.items() if c == "recognize" and isinstance(o, Applied)
    )
    assert [await real_redis.zcard(ledger.keys.expiry(p)) for p in ledger.keys.all()] == [0] * ledger.keys.partitions
