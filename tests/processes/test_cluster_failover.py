"""A Redis Cluster master SIGKILLed under retried deposits and transfers between partitions, with
BILLING_REDIS_WAIT_REPLICAS=1: once its replica took over, every acknowledged operation is in its users' balances
exactly once, every key answers as a replay, no transfer is left in transit, and reconcile agrees with the ledger.
Transfers go into and out of the killed master's partitions, so some are between their debit and their credit
when it dies. bench/failover.py measures deposits with and without WAIT (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from billing.app import make_app
from billing.bootstrap import bootstrap
from billing.core.money import format_kopecks, parse_amount
from billing.projection.recovery import reconcile
from billing.projection.store import LedgerStore
from tests.support.api import Api, Response
from tests.support.redis_cluster import LocalCluster, cluster_settings
from tests.support.servers import served

CLIENTS = 4
USERS = 40
BEFORE_THE_KILL = 150  # acknowledged operations
TRANSFER_PATH = "/v1/transfers"
# A transfer's answers that settle it: moved, or refused (the sender had too little, or no account yet).
SETTLED = {201, 404, 409}


async def test_with_wait_for_a_replica_a_masters_death_loses_and_doubles_no_acknowledged_operation(
    own_cluster: LocalCluster, mongo_db: Any, prefix: str, tmp_path: Path
) -> None:
    settings = cluster_settings(
        own_cluster,
        prefix,
        tmp_path,
        redis_wait_replicas=1,
        # Far above a replica's lag on one machine: an acknowledged write is on the replica, even on a loaded
        # machine. Once the master died its successor has no replica, so its writes each wait this long.
        redis_wait_timeout_ms=2000,
    )
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    try:
        async with served(make_app(context)) as url:
            api = Api(url)
            # (kind, sender or depositor, recipient or 0, kopecks, key, answer)
            acked: list[tuple[str, int, int, int, str, Response]] = []
            enough, stop = asyncio.Event(), asyncio.Event()
            keys = context.ledger.keys

            async def until_settled(kind: str, payload: dict[str, Any], key: str) -> Response:
                """Retried with its key until settled: 503 while a master is dead or being replaced."""
                path, token = ("/v1/deposits", "tok-payments") if kind == "deposit" else (TRANSFER_PATH, "tok-payments")
                settled = {201} if kind == "deposit" else SETTLED
                while (answer := await api.post(path, payload, token=token, key=key)).status not in settled:
                    assert answer.status == 503, answer.body
                    await asyncio.sleep(0.02)
                return answer

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    user, amount, key = rng.randint(1, USERS), rng.randint(1, 10_000), uuid.uuid4().hex
                    others = [u for u in range(1, USERS + 1) if keys.partition_of(u) != keys.partition_of(user)]
                    if rng.random() < 0.6:
                        payload: dict[str, Any] = {"user_id": user, "amount": format_kopecks(amount)}
                        answer = await until_settled("deposit", payload, key)
                        acked.append(("deposit", user, 0, amount, key, answer))
                    else:
                        recipient = rng.choice(others)
                        payload = {"from_user_id": user, "to_user_id": recipient, "amount": format_kopecks(amount)}
                        answer = await until_settled("transfer", payload, key)
                        acked.append(("transfer", user, recipient, amount, key, answer))
                    if len(acked) >= BEFORE_THE_KILL:
                        enough.set()

            tasks = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
            await asyncio.wait_for(enough.wait(), timeout=60)
            master = own_cluster.master_of_slot(key_slot(context.ledger.keys.account(1).encode()))
            await asyncio.to_thread(own_cluster.kill, master)
            await asyncio.to_thread(own_cluster.wait_failover, master, 30.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)  # each finishes the operation in hand

            expected: Counter[int] = Counter()
            deposited = 0
            moved = 0
            for kind, user, recipient, amount, _key, answer in acked:
                if kind == "deposit":
                    expected[user] += amount
                    deposited += amount
                elif answer.status == 201:
                    expected[user] -= amount
                    expected[recipient] += amount
                    moved += 1
            assert moved > 0
            touched = sorted({u for _, user, recipient, *_ in acked for u in (user, recipient) if u})
            balances = await api.get(f"/v1/balances?user_ids={','.join(map(str, touched))}", token="tok-support")
            assert balances.status == 200, balances.body
            # Every account came from an acknowledged deposit or transfer: the same users, the same kopecks.
            items = balances.json["items"]  # a sender refused for having no account has none still
            found = {item["user_id"]: parse_amount(item["available"]) for item in items if "available" in item}
            assert found == dict(expected)
            assert sum(found.values()) == deposited  # transfers moved money, never made or lost any
            assert await context.ledger.open_transits() == []

            async def replay(kind: str, user: int, recipient: int, amount: int, key: str) -> Response:
                if kind == "deposit":
                    return await api.deposit(user, format_kopecks(amount), key=key)
                body = {"from_user_id": user, "to_user_id": recipient, "amount": format_kopecks(amount)}
                return await api.post(TRANSFER_PATH, body, token="tok-payments", key=key)

            replays = await asyncio.gather(*(replay(*op[:5]) for op in acked))
            assert [(r.status, r.body, r.headers.get("Idempotent-Replayed")) for r in replays] == [
                (op[5].status, op[5].body, "true") for op in acked
            ]
            report = await reconcile(context.redis, keys, LedgerStore(context.mongo), context.projector, 60)
            assert report.ok and report.in_transit == 0, report.mismatches
            api.close()
    finally:
        await context.stop()
