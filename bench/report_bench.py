"""Times the monthly revenue report over N charges in MongoDB and shows the aggregation's plan."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import Int64

from billing.core.config import Settings
from billing.projection.store import LedgerStore
from billing.views.reports import Reports

MONTH = "2025-11"
MONTH_START = datetime(2025, 10, 31, 21, 0, tzinfo=UTC)  # 1 November 00:00 in Moscow
MONTH_SPAN_MS = 30 * 24 * 3600 * 1000
SERVICES = 200
BATCH = 5_000


def documents(n: int, seed: int = 7) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """N charges in the month plus N/4 other records (reserves, releases, charges of the next month)."""
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = []
    expected: dict[int, int] = {}
    for i in range(n + n // 4):
        service_id = rng.randint(1, SERVICES)
        amount = rng.randint(1, 10_000_000)
        in_month = i < n
        kind = "charge" if in_month else rng.choice(["reserve", "release", "charge"])
        offset = rng.randrange(MONTH_SPAN_MS) + (0 if in_month else MONTH_SPAN_MS + 86_400_000)
        if in_month:
            expected[service_id] = expected.get(service_id, 0) + amount
        docs.append(
            {
                "_id": Int64(i + 1),
                "type": kind,
                "user_id": Int64(rng.randint(1, 50_000)),
                "amount": Int64(amount),
                "available_after": Int64(0),
                "reserved_after": Int64(0),
                "created_at": MONTH_START + timedelta(milliseconds=offset),
                "service_id": Int64(service_id),
                "order_id": Int64(i + 1),
            }
        )
    rng.shuffle(docs)
    return docs, expected


async def load(db: Any, docs: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    await LedgerStore(db).ensure_indexes()  # the projector's indexes, (type, created_at) among them
    for start in range(0, len(docs), BATCH):
        await db.transactions.insert_many(docs[start : start + BATCH], ordered=False)
    names = [{"_id": Int64(s), "name": f"Услуга {s:03d}", "seq": Int64(s)} for s in range(1, SERVICES + 1, 2)]
    await db.services.insert_many(names)
    return time.perf_counter() - started


async def measure(db: Any, expected: dict[int, int], repeats: int) -> list[float]:
    reports = Reports(db, Settings(secret="bench", reports_dir=Path(tempfile.mkdtemp()), _env_file=None))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        rows = await reports.totals(MONTH)
        timings.append(time.perf_counter() - started)
    assert sum(total for _, total in rows) == sum(expected.values()), "report total differs from the loaded sum"
    assert len(rows) == len(expected)
    return timings


async def explain(db: Any) -> dict[str, Any]:
    reports = Reports(db, Settings(secret="bench", _env_file=None))
    period = reports.month(MONTH)
    match = {"type": "charge", "created_at": {"$gte": period.start, "$lt": period.end}}
    pipeline = [{"$match": match}, {"$group": {"_id": "$service_id", "total": {"$sum": {"$toDecimal": "$amount"}}}}]
    answer = await db.command({"explain": {"aggregate": "transactions", "pipeline": pipeline, "cursor": {}}})
    planner = answer.get("queryPlanner") or answer["stages"][0]["$cursor"]["queryPlanner"]
    return planner["winningPlan"]


async def count_matching(db: Any, repeats: int) -> float:
    """How long the store takes just to find the month's charges (the floor under any report)."""
    period = Reports(db, Settings(secret="bench", _env_file=None)).month(MONTH)
    match = {"type": "charge", "created_at": {"$gte": period.start, "$lt": period.end}}
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        await db.transactions.aggregate([{"$match": match}, {"$count": "n"}]).to_list(None)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def index_names(plan: dict[str, Any]) -> list[str]:
    found = [plan["indexName"]] if "indexName" in plan else []
    for key in ("inputStage", "inputStages"):
        child = plan.get(key)
        for sub in child if isinstance(child, list) else [child] if child else []:
            found += index_names(sub)
    return found


async def run_backend(name: str, db: Any, n: int, repeats: int) -> None:
    docs, expected = documents(n)
    loaded = await load(db, docs)
    timings = await measure(db, expected, repeats)
    print(f"[{name}] loaded {len(docs)} records ({n} charges in {MONTH}) in {loaded:.1f} s")
    print(
        f"[{name}] report {MONTH} over {n} charges, {len(expected)} services: "
        f"median {statistics.median(timings) * 1000:.0f} ms, best {min(timings) * 1000:.0f} ms "
        f"({repeats} runs)"
    )
    floor = await count_matching(db, repeats)
    print(f"[{name}] for scale: $match + $count of the same charges alone: median {floor * 1000:.0f} ms")
    if name != "mongomock":  # mongomock has no explain
        plan = await explain(db)
        print(f"[{name}] winning plan uses index: {index_names(plan)}")
        print(json.dumps(plan, indent=2, default=str))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="charges in the reported month")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mongomock", action="store_true", help="also time the embedded mongomock store")
    parser.add_argument("--only-mongomock", action="store_true", help="time mongomock alone")
    parser.add_argument("--mongo-url", default=None, help="use this MongoDB instead of starting SecantusDB")
    args = parser.parse_args()
    if not args.only_mongomock:
        await run_mongodb(args)
    if args.mongomock or args.only_mongomock:
        from mongomock_motor import AsyncMongoMockClient

        await run_backend("mongomock", AsyncMongoMockClient(tz_aware=True)["bench"], args.n, args.repeats)


async def run_mongodb(args: argparse.Namespace) -> None:
    """On the MongoDB at --mongo-url, or on a SecantusDB (MongoDB wire protocol) started for the run."""
    from motor.motor_asyncio import AsyncIOMotorClient

    server = None
    url = args.mongo_url
    if url is None:
        from tests.support.servers import MongoWireServer

        server = MongoWireServer().start()
        url = server.url
    try:
        client = AsyncIOMotorClient(url, tz_aware=True)
        db = client[f"report_bench_{int(time.time())}"]
        try:
            await run_backend("secantus" if server else "mongodb", db, args.n, args.repeats)
        finally:
            await client.drop_database(db.name)
            client.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
