"""A Redis Cluster master SIGKILLed under retried deposits, with BILLING_REDIS_WAIT_REPLICAS=1: once its replica
took over, every acknowledged deposit is in its user's balance and its key answers as a replay.
bench/failover.py measures the same with and without WAIT (docs/scaling.md)."""

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
from billing.core.config import Settings
from billing.core.money import format_kopecks, parse_amount
from tests.support.api import TEST_TOKENS, Api
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import served

CLIENTS = 4
USERS = 40
BEFORE_THE_KILL = 150  # acknowledged deposits


async def test_with_wait_for_a_replica_a_masters_death_loses_no_acknowledged_deposit(
    own_cluster: LocalCluster, mongo_db: Any, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=own_cluster.url,
        redis_mode="cluster",
        partitions=16,
        redis_wait_replicas=1,
        # Far above a replica's lag on one machine: an acknowledged write is on the replica, even on a loaded
        # machine. Once the master died its successor has no replica, so its writes each wait this long.
        redis_wait_timeout_ms=2000,
        tokens=TEST_TOKENS,
        secret="test-secret",
        redis_prefix=f"test:{uuid.uuid4().hex[:12]}:",
        reports_dir=tmp_path / "reports",
        _env_file=None,
    )
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    try:
        async with served(make_app(context)) as url:
            api = Api(url)
            acked: list[tuple[int, int, str]] = []
            enough, stop = asyncio.Event(), asyncio.Event()

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    user, amount, key = rng.randint(1, USERS), rng.randint(1, 10_000), uuid.uuid4().hex
                    # Retried with its key until acknowledged: 503 while the master is dead or being replaced.
                    while (answer := await api.deposit(user, format_kopecks(amount), key=key)).status != 201:
                        assert answer.status == 503, answer.body
                        await asyncio.sleep(0.02)
                    acked.append((user, amount, key))
                    if len(acked) >= BEFORE_THE_KILL:
                        enough.set()

            tasks = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
            await asyncio.wait_for(enough.wait(), timeout=60)
            master = own_cluster.master_of_slot(key_slot(context.ledger.keys.account(1).encode()))
            await asyncio.to_thread(own_cluster.kill, master)
            await asyncio.to_thread(own_cluster.wait_failover, master, 30.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)  # each finishes the deposit in hand

            expected: Counter[int] = Counter()
            for user, amount, _ in acked:
                expected[user] += amount
            balances = await api.get(
                f"/v1/balances?user_ids={','.join(map(str, sorted(expected)))}", token="tok-support"
            )
            assert balances.status == 200, balances.body
            found = {item["user_id"]: parse_amount(item["available"]) for item in balances.json["items"]}
            assert found == dict(expected)
            replays = await asyncio.gather(
                *(api.deposit(user, format_kopecks(amount), key=key) for user, amount, key in acked)
            )
            assert [(r.status, r.headers.get("Idempotent-Replayed")) for r in replays] == [(201, "true")] * len(acked)
            api.close()
    finally:
        await context.stop()
