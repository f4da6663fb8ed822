"""What linking transactions into their hash chains costs the projector: its CPU per transaction projecting the
same deposits with the chain and without it (the Chainer's link left out), in alternating rounds.

Each round writes N deposits of `users` users through the ledger's scripts into a redis-server of its own
prefix, then times one projector (batches of BILLING_PROJECTOR_BATCH) draining them into a SecantusDB
database of its own: the projector's process CPU (this process: the scripts' writes are done before) and
SecantusDB's, per transaction. Then N more deposits, drained by the same projector: "cold" is the first
drain (a projector that has just taken its partitions reads each user's chain head from MongoDB once),
"warm" the second (every head in memory, as for a projector that has been running).

A last pair of rounds projects into a store that accepts every write at once (AcceptingStore): the projector's
own CPU per transaction (reading the streams, decoding, building documents, linking, acknowledging, the
watermarks), apart from what the MongoDB client spends on the writes. With --batched the deposits are written
as `POST /v1/batch` writes them (batch runs of BATCH_CHUNK of one partition), so each outbox entry carries
OUTBOX_ENTRY_TXNS transactions instead of one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient
from redis.asyncio import Redis

from bench.procs import USERS, process_cpu_seconds
from billing.core.config import default
from billing.ledger.scripts import BATCH_CHUNK, Ledger
from billing.projection.chainer import Chainer, Head
from billing.projection.projector import Projector
from billing.projection.store import LedgerStore


class Unlinked(Chainer):
    """The projector as it was before the chain: nothing computed, nothing read."""

    async def link(self, docs: list[dict[str, Any]]) -> dict[int, Head]:
        return {}


class AcceptingStore(LedgerStore):
    """A store whose writes succeed at once and whose chain heads are all new: no MongoDB client work at all."""

    async def ensure_indexes(self) -> None:
        pass

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        return len(docs), 0

    async def upsert_service_names(self, changes: Any) -> int:
        return 0

    async def raise_partition_tops(self, tops: Any) -> None:
        pass

    async def previous_link(self, user_id: int, created_at: Any, txn_id: int, later: int = 0) -> tuple[bool, None]:
        return False, None


async def write_deposits(ledger: Ledger, n: int, users: int, batched: bool) -> None:
    """n deposits of `users` users: one script run each, or batch runs of BATCH_CHUNK of one partition each."""
    runs: dict[int, list[Any]] = {}
    for i in range(n):
        name, keys, args = ledger.deposit_call(1 + i % users, 100 + i, "пополнение" if i % 3 else None)
        if batched:
            runs.setdefault(int(args[0]), []).append((name, None, "", keys, args))
        else:
            await ledger.run(name, None, "", keys, args)
    for calls in runs.values():
        for start in range(0, len(calls), BATCH_CHUNK):
            for reply in await ledger.send_batches([ledger.batch_command(calls[start : start + BATCH_CHUNK])]):
                if isinstance(reply, Exception):
                    raise reply


async def one_round(
    redis_url: str,
    mongo: Any,
    mongo_pid: int,
    n: int,
    users: int,
    chained: bool,
    accepting: bool = False,
    batched: bool = False,
) -> list[tuple[float, float]]:
    """[(projector CPU, SecantusDB CPU) per transaction in microseconds] of the cold drain, then the warm one."""
    redis = Redis.from_url(redis_url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    ledger = Ledger(redis, prefix, 3600, partitions=default("partitions"))
    await ledger.load_scripts()
    db = mongo[f"projector_bench_{uuid.uuid4().hex[:8]}"]
    store = AcceptingStore(db) if accepting else LedgerStore(db)
    projector = Projector(redis, ledger.keys, store, batch=default("projector_batch"))
    if not chained:
        projector.chainer = Unlinked(projector.store)
    await projector.store.ensure_indexes()
    figures = []
    for drain in ("cold", "warm"):
        await write_deposits(ledger, n, users, batched)
        lookups = projector.chainer.lookups
        cpu, mongo_cpu, wall = time.process_time(), process_cpu_seconds(mongo_pid), time.perf_counter()
        await projector.drain(timeout=600, keep_leases=True)  # and the heads, as a running projector
        cpu, mongo_cpu = time.process_time() - cpu, process_cpu_seconds(mongo_pid) - mongo_cpu
        wall = time.perf_counter() - wall
        figures.append((1e6 * cpu / n, 1e6 * mongo_cpu / n))
        print(
            f"  {'chained' if chained else 'unlinked'} {drain}: {n} transactions in {wall:.1f} s, projector "
            f"{1e6 * cpu / n:.1f} us, SecantusDB {1e6 * mongo_cpu / n:.1f} us of CPU each "
            f"(chain heads read: {projector.chainer.lookups - lookups})",
            flush=True,
        )
    await projector.stop()  # gives the leases back
    await redis.aclose()
    if accepting:
        return figures
    written = await db.transactions.count_documents({})
    assert written == 2 * n, (written, n)
    hashed = await db.transactions.count_documents({"hash": {"$exists": True}})
    assert hashed == (2 * n if chained else 0), hashed
    await mongo.drop_database(db.name)
    return figures


@dataclass
class ProjectionCost:
    """The projector's CPU per transaction (warm, with the chain) for deposits written one way, medians."""

    writes: str  # "single" (one script run each: an outbox entry per transaction) or "batched"
    projector_us: float  # projecting into SecantusDB behind motor
    own_us: float  # into a store that accepts at once: the projector's own work
    store_us: float  # SecantusDB's CPU per transaction meanwhile

    @property
    def client_us(self) -> float:
        """What the MongoDB client spends on the writes: the difference."""
        return self.projector_us - self.own_us


async def projection_costs(redis_url: str, mongo_url: str, mongo_pid: int, n: int, rounds: int) -> list[ProjectionCost]:
    """The projector's warm CPU per transaction with SecantusDB and its own work (accepting store), for single
    and batched writes, `rounds` alternating rounds of each (medians): what `make bench` reports."""
    mongo: Any = AsyncIOMotorClient(mongo_url, tz_aware=True)
    costs = []
    try:
        for batched in (False, True):
            full, own = [], []
            for _ in range(rounds):
                full.append((await one_round(redis_url, mongo, mongo_pid, n, USERS, True, batched=batched))[1])
                own.append(
                    (await one_round(redis_url, mongo, mongo_pid, n, USERS, True, accepting=True, batched=batched))[1]
                )
            costs.append(
                ProjectionCost(
                    "batched" if batched else "single",
                    statistics.median(f[0] for f in full),
                    statistics.median(f[0] for f in own),
                    statistics.median(f[1] for f in full),
                )
            )
    finally:
        mongo.close()
    return costs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="deposits per round")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (alternating; medians reported)")
    parser.add_argument("--batched", action="store_true", help="write the deposits as batch runs (see above)")
    args = parser.parse_args()
    from tests.support.servers import MongoWireServer, RedisServer

    redis_server, mongo_server = RedisServer().start(), MongoWireServer().start()
    try:
        mongo = AsyncIOMotorClient(mongo_server.url, tz_aware=True)
        mongo_pid = mongo_server.proc.pid
        figures: dict[bool, list[list[tuple[float, float]]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for chained in (False, True):
                figures[chained].append(
                    await one_round(
                        redis_server.url, mongo, mongo_pid, args.n, args.users, chained, batched=args.batched
                    )
                )
        own = [
            await one_round(
                redis_server.url, mongo, mongo_pid, args.n, args.users, True, accepting=True, batched=args.batched
            )
            for _ in range(2)
        ]
        for chained in (False, True):
            for index, drain in enumerate(("cold", "warm")):
                projector = statistics.median(f[index][0] for f in figures[chained])
                database = statistics.median(f[index][1] for f in figures[chained])
                label = "with the hash chain" if chained else "without it"
                print(
                    f"{label}, {drain}: projector {projector:.1f} us, SecantusDB {database:.1f} us of CPU per "
                    "transaction (medians)"
                )
        projector_own = statistics.median(f[1][0] for f in own)
        print(
            f"with the hash chain, warm, into a store that accepts at once: projector {projector_own:.1f} us of CPU "
            "per transaction (its own work, apart from the MongoDB client's)"
        )
        mongo.close()
    finally:
        mongo_server.stop()
        redis_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
