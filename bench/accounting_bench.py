"""Times the accounting views over N ledger transactions in MongoDB: the balance at a moment (p50, p99), one
user's monthly statement (JSON figures and CSV), the hash chain (linking as the projector does it, and
`billing verify`'s re-computation), and shows each query's plan.

The ledger is simulated in Python (deposits, withdrawals, reservations settled by a charge and a release or
cancelled, transfers) with each account's running balance, so every document carries the available_after and
reserved_after the scripts would write, linked into its user's hash chain by the projector's Chainer and
inserted through LedgerStore (the projector's own insert) with the projector's indexes. Accounts exist in a
fakeredis holding no watermark (every id counts).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
from bson import Int64

from billing.core.chain import GENESIS, chain_hash
from billing.core.config import Settings
from billing.core.timefmt import datetime_to_ms, format_ms, ms_to_datetime
from billing.ledger.scripts import Ledger
from billing.projection.chainer import Chainer
from billing.projection.store import LedgerStore
from billing.projection.verify import verify_chains
from billing.views.accounting import Accounting

START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_MS = 365 * 24 * 3600 * 1000
MONTH = "2026-06"
BATCH = 5_000
LINK_BATCH = 100  # the projector's batch (BILLING_PROJECTOR_BATCH)


def documents(n: int, users: int, seed: int = 7) -> tuple[list[dict[str, Any]], dict[int, tuple[int, int]]]:
    """N transactions of `users` users over 2026, with consistent running balances; the final balances."""
    rng = random.Random(seed)
    balances: dict[int, list[int]] = {}
    held: dict[int, list[tuple[int, int]]] = {}  # user -> open reservations (order, amount)
    docs: list[dict[str, Any]] = []
    order = 0

    def add(user_id: int, kind: str, amount: int, at_ms: int, **refs: int) -> None:
        available, reserved = balances[user_id]
        doc: dict[str, Any] = {
            "_id": Int64(len(docs) + 1),
            "type": kind,
            "user_id": Int64(user_id),
            "amount": Int64(amount),
            "available_after": Int64(available),
            "reserved_after": Int64(reserved),
            "created_at": ms_to_datetime(at_ms),
        }
        doc.update({name: Int64(value) for name, value in refs.items()})
        docs.append(doc)

    while len(docs) < n:
        at_ms = datetime_to_ms(START) + SPAN_MS * len(docs) // n
        uid = rng.randint(1, users)
        balance = balances.setdefault(uid, [0, 0])
        kind = rng.choices(["deposit", "withdrawal", "transfer", "reserve", "settle"], [3, 1, 1, 3, 3])[0]
        if kind == "deposit" or balance[0] == 0:
            amount = rng.randint(100, 500_000)
            balance[0] += amount
            add(uid, "deposit", amount, at_ms)
        elif kind == "withdrawal":
            amount = rng.randint(1, balance[0])
            balance[0] -= amount
            add(uid, "withdrawal", amount, at_ms)
        elif kind == "transfer":
            other = rng.randint(1, users)
            if other == uid:
                continue
            amount = rng.randint(1, balance[0])
            balance[0] -= amount
            add(uid, "transfer_out", amount, at_ms, counterparty_user_id=other)
            balances.setdefault(other, [0, 0])[0] += amount
            add(other, "transfer_in", amount, at_ms, counterparty_user_id=uid)
        elif kind == "reserve" or not held.get(uid):
            order += 1
            amount = rng.randint(1, balance[0])
            balance[0] -= amount
            balance[1] += amount
            held.setdefault(uid, []).append((order, amount))
            add(uid, "reserve", amount, at_ms, service_id=order % 50 + 1, order_id=order)
        else:
            order_id, amount = held[uid].pop(0)
            refs = {"service_id": order_id % 50 + 1, "order_id": order_id}
            charged = rng.choice([0, amount, rng.randint(1, amount)])
            if charged:
                balance[1] -= charged
                add(uid, "charge", charged, at_ms, **refs)
            if amount - charged:
                balance[1] -= amount - charged
                balance[0] += amount - charged
                add(uid, "release", amount - charged, at_ms, **refs)
    return docs, {uid: (b[0], b[1]) for uid, b in balances.items()}


async def load(db: Any, docs: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    store = LedgerStore(db)
    await store.ensure_indexes()
    for first in range(0, len(docs), BATCH):
        await store.insert_transactions(docs[first : first + BATCH])
    return time.perf_counter() - started


def milliseconds(timings: list[float]) -> str:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


async def link(db: Any, docs: list[dict[str, Any]]) -> None:
    """Set every document's hash as the projector does (batches of LINK_BATCH, the heads kept in memory, a new
    user's head looked up in MongoDB), and print its CPU per transaction against the hashing alone."""
    chainer = Chainer(LedgerStore(db))
    cpu, started = time.process_time(), time.perf_counter()
    for first in range(0, len(docs), LINK_BATCH):
        chainer.advance(await chainer.link(docs[first : first + LINK_BATCH]))
    linking_cpu, linking_wall = time.process_time() - cpu, time.perf_counter() - started
    cpu = time.process_time()
    for doc in docs:
        chain_hash(GENESIS, doc)
    hashing_cpu = time.process_time() - cpu
    print(
        f"linking {len(docs)} transactions in batches of {LINK_BATCH}: {1e6 * linking_cpu / len(docs):.1f} us of CPU "
        f"each ({linking_wall:.1f} s; {chainer.lookups} chain heads read from MongoDB, one per user); the canonical "
        f"JSON and SHA-256 alone {1e6 * hashing_cpu / len(docs):.1f} us"
    )


async def verify(db: Any, uid: int) -> None:
    """`billing verify`'s re-computation of every chain, and of one user's; the plan of its cursor."""
    store = LedgerStore(db)
    report = await verify_chains(store)
    assert report.breaks == [], report.summary()
    print(
        f"verify: {report.transactions} transactions of {report.users} users in {report.seconds:.1f} s: "
        f"{report.rate:,.0f} transactions/s"
    )
    one = await verify_chains(store, uid)
    assert one.breaks == [] and one.users == 1
    print(f"verify --user {uid}: {one.transactions} transactions in {one.seconds * 1000:.1f} ms")
    print("verify cursor plan:", stages((await store.in_chain_order().explain())["queryPlanner"]["winningPlan"]))
    plan = await store.in_chain_order(uid).explain()
    print("verify --user cursor plan:", stages(plan["queryPlanner"]["winningPlan"]))
    plan = await store.latest_first(uid, START + timedelta(days=400)).explain()
    print(
        "chain head lookup plan (the projector, for a user it has not seen):",
        stages(plan["queryPlanner"]["winningPlan"]),
    )


async def run(db: Any, n: int, users: int, lookups: int, repeats: int) -> None:
    docs, finals = documents(n, users)
    await LedgerStore(db).ensure_indexes()
    await link(db, docs)
    loaded = await load(db, docs)
    print(f"loaded {len(docs)} transactions of {users} users over 2026 in {loaded:.1f} s")
    redis = fakeredis.FakeAsyncRedis()
    settings = Settings(secret="bench", _env_file=None)
    ledger = Ledger(redis, settings.redis_prefix, settings.idempotency_ttl_seconds, partitions=settings.partitions)
    for uid, (available, reserved) in finals.items():
        await redis.hset(ledger.keys.account(uid), mapping={"available": available, "reserved": reserved})
    views = Accounting(db, ledger, settings)
    rng = random.Random(3)

    # the balance at a moment: random users, random moments of the year
    timings = []
    for _ in range(lookups):
        uid = rng.randint(1, users)
        at = format_ms(datetime_to_ms(START) + rng.randrange(SPAN_MS))
        started = time.perf_counter()
        await views.balance_at(uid, at)
        timings.append(time.perf_counter() - started)
    print(f"balance at a moment, {lookups} lookups: {milliseconds(timings)}")
    # the final balance from the ledger is the simulated one
    last = await views.balance_at(1, format_ms(datetime_to_ms(START + timedelta(days=400))))
    assert (last.available, last.reserved) == finals[1], "balance at the end differs from the simulation"

    # one user's statement: the busiest user of the month
    counts: dict[int, int] = {}
    month = views.month(MONTH)
    for doc in docs:
        if month.start <= doc["created_at"] < month.end:
            counts[int(doc["user_id"])] = counts.get(int(doc["user_id"]), 0) + 1
    uid = max(counts, key=lambda u: counts[u])
    json_timings, csv_timings = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        statement = await views.statement(uid, MONTH)
        json_timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        size = sum([len(chunk) async for chunk in views.statement_csv(uid, MONTH)])
        csv_timings.append(time.perf_counter() - started)
    assert statement.count == counts[uid]
    print(
        f"statement {MONTH} of user {uid} ({statement.count} transactions): JSON "
        f"median {statistics.median(json_timings) * 1000:.1f} ms; CSV ({size} bytes) median "
        f"{statistics.median(csv_timings) * 1000:.1f} ms ({repeats} runs)"
    )
    plan = await views.latest_cursor(views.before_filter(uid, month.end)).explain()
    print("balance lookup plan:", stages(plan["queryPlanner"]["winningPlan"]))
    explain = {"aggregate": "transactions", "pipeline": views.statement_pipeline(uid, month, 2**63 - 1), "cursor": {}}
    answer = await db.command({"explain": explain})
    planner = answer.get("queryPlanner") or answer["stages"][0]["$cursor"]["queryPlanner"]
    print("statement aggregation plan:", stages(planner["winningPlan"]))
    await verify(db, uid)
    await redis.aclose()


def stages(plan: dict[str, Any]) -> list[str]:
    out = [plan["stage"] + (f"({plan['indexName']})" if "indexName" in plan else "")]
    while "inputStage" in plan:
        plan = plan["inputStage"]
        out.append(plan["stage"] + (f"({plan['indexName']})" if "indexName" in plan else ""))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000, help="transactions in the ledger")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--lookups", type=int, default=1_000, help="balance-at-a-moment reads timed")
    parser.add_argument("--repeats", type=int, default=5, help="statement reads timed")
    parser.add_argument("--mongo-url", default=None, help="use this MongoDB instead of starting SecantusDB")
    args = parser.parse_args()
    from motor.motor_asyncio import AsyncIOMotorClient

    server = None
    url = args.mongo_url
    if url is None:
        from tests.support.servers import MongoWireServer

        server = MongoWireServer().start()
        url = server.url
    try:
        client = AsyncIOMotorClient(url, tz_aware=True)
        db = client[f"accounting_bench_{int(time.time())}"]
        try:
            await run(db, args.n, args.users, args.lookups, args.repeats)
        finally:
            await client.drop_database(db.name)
            client.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
