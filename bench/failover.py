"""What a Redis Cluster master's death loses: retried deposits over HTTP while one master is SIGKILLed.

For each BILLING_REDIS_WAIT_REPLICAS value asked for (0 and 1 by default): starts its own LocalCluster (3 masters,
3 replicas, tests/support/redis_cluster.py), serves the app in this process in cluster mode (16 partitions,
mongomock for MongoDB), runs a few clients that send deposits, each with its own Idempotency-Key and retried with
that key on 503 or a connection error until answered 201, SIGKILLs the master of a third of the partitions
mid-load, waits for its replica to take over, and keeps the load going. Then it checks every acknowledged
deposit: per user, the sum of acknowledged amounts against the balance, and each key sent again (a replay
answers `Idempotent-Replayed: true`; a key that runs anew had lost its deposit). Prints a table and the command.

    .venv/bin/python -m bench.failover [--seconds N] [--wait-replicas 0|1] [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from mongomock_motor import AsyncMongoMockClient
from redis.crc import key_slot
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from billing.app import make_app
from billing.bootstrap import bootstrap
from billing.core.config import Settings
from billing.core.money import format_kopecks, parse_amount
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import served

TOKEN = "failover-payments"
TOKENS = {TOKEN: ["payments"]}
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
PARTITIONS = 16
USERS = 200
RETRY_PAUSE = 0.02  # between a 503 and the retry with the same key
REPLAYS_AT_ONCE = 64
GIVE_UP_SECONDS = 60.0  # one deposit unacknowledged this long ends the run as broken


@dataclass
class Ack:
    user: int
    amount: int  # kopecks
    key: str
    latency: float  # seconds, of the attempt answered 201
    until_ack: float  # seconds from the first attempt to the 201, retries included
    at: float  # monotonic time of the 201


@dataclass
class RunResult:
    wait_replicas: int
    acks: list[Ack] = field(default_factory=list)
    attempts: int = 0
    retries: int = 0
    unexpected: list[str] = field(default_factory=list)
    killed_at: float = 0.0
    failover_seconds: float = 0.0
    lost: int = 0  # acknowledged keys that ran anew when sent again
    missing_kopecks: int = 0  # acknowledged money not in the balances
    doubled: int = 0  # users whose balance holds more than their acknowledged deposits
    extra_kopecks: int = 0  # money in the balances beyond the acknowledged
    short_waits: float = 0.0  # billing_redis_wait_short_total

    def latencies(self, before_kill: bool = False) -> list[float]:
        return sorted(a.latency for a in self.acks if not before_kill or a.at < self.killed_at)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


class Client:
    """One client: a deposit at a time, retried with its key until acknowledged."""

    def __init__(self, url: str, seed: int, result: RunResult) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.result = result
        self.http = AsyncHTTPClient(force_instance=True)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                user, amount = self.rng.randint(1, USERS), self.rng.randint(1, 100_000)
                ack = await self.deposit(user, amount, uuid.uuid4().hex)
                if ack is not None:
                    self.result.acks.append(ack)
        finally:
            self.http.close()

    async def deposit(self, user: int, amount: int, key: str) -> Ack | None:
        first = time.monotonic()
        body = orjson.dumps({"user_id": user, "amount": format_kopecks(amount)})
        while True:
            started = time.monotonic()
            self.result.attempts += 1
            answer = await self.http.fetch(
                HTTPRequest(
                    self.url + "/v1/deposits",
                    method="POST",
                    body=body,
                    headers={**HEADERS, "Idempotency-Key": key},
                    request_timeout=30,
                ),
                raise_error=False,
            )
            done = time.monotonic()
            if answer.code == 201:
                return Ack(user, amount, key, done - started, done - first, done)
            if answer.code not in (503, 599) or done - first > GIVE_UP_SECONDS:
                self.result.unexpected.append(f"{answer.code} {answer.body!r}")
                return None
            self.result.retries += 1
            await asyncio.sleep(RETRY_PAUSE)


async def run_once(wait_replicas: int, seconds: float, clients: int) -> RunResult:
    result = RunResult(wait_replicas)
    cluster = await asyncio.to_thread(lambda: LocalCluster().start())
    try:
        with tempfile.TemporaryDirectory(prefix="billing-failover-") as tmp:
            settings = Settings(
                redis_url=cluster.url,
                redis_mode="cluster",
                partitions=PARTITIONS,
                redis_wait_replicas=wait_replicas,
                tokens=TOKENS,
                secret="failover-secret",
                redis_prefix=f"failover:{uuid.uuid4().hex[:8]}:",
                reports_dir=Path(tmp) / "reports",
                _env_file=None,
            )
            mongo = AsyncMongoMockClient(tz_aware=True)["billing_failover"]
            context = await bootstrap(settings, mongo=mongo)
            await context.start()
            try:
                async with served(make_app(context)) as url:
                    await load(url, cluster, context.ledger.keys.account(1), result, seconds, clients)
                    await check(url, result)
            finally:
                await context.stop()
    finally:
        await asyncio.to_thread(cluster.stop)
    return result


async def load(url: str, cluster: LocalCluster, key: str, result: RunResult, seconds: float, clients: int) -> None:
    """Load for a third of `seconds`, kill the master of `key`'s slot, wait for the failover, load the rest."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(Client(url, n, result).run(stop)) for n in range(clients)]
    try:
        await asyncio.sleep(seconds / 3)
        master = await asyncio.to_thread(cluster.master_of_slot, key_slot(key.encode()))
        result.killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, master)
        await asyncio.to_thread(cluster.wait_failover, master, 30.0)
        result.failover_seconds = time.monotonic() - result.killed_at
        await asyncio.sleep(max(seconds * 2 / 3 - result.failover_seconds, 3.0))
    finally:
        stop.set()
    await asyncio.gather(*tasks)  # each client finishes the deposit in hand


async def check(url: str, result: RunResult) -> None:
    http = AsyncHTTPClient(force_instance=True, max_clients=REPLAYS_AT_ONCE)
    headers = HEADERS
    try:
        # Before the replays, which wait too.
        metrics = await http.fetch(f"{url}/metrics", raise_error=False)
        for line in metrics.body.decode().splitlines():
            if line.startswith("billing_redis_wait_short_total "):
                result.short_waits = float(line.split()[1])
        acked: dict[int, int] = defaultdict(int)
        for ack in result.acks:
            acked[ack.user] += ack.amount
        for user, expected in acked.items():
            answer = await http.fetch(f"{url}/v1/users/{user}/balance", headers=headers, raise_error=False)
            balance = parse_amount(orjson.loads(answer.body)["available"]) if answer.code == 200 else 0
            result.missing_kopecks += max(0, expected - balance)
            # Every deposit sent was retried to a 201: money beyond the acknowledged was applied more than once.
            result.extra_kopecks += max(0, balance - expected)
            result.doubled += balance > expected
        # Each acknowledged key again: a replay is what the first answer promised; a 201 that is no replay means
        # the deposit was gone and has run now (so the balances were read first).
        # Many at a time: under WAIT a replay on the master that lost its replica waits out the WAIT timeout.
        slots = asyncio.Semaphore(REPLAYS_AT_ONCE)

        async def replay(ack: Ack) -> None:
            async with slots:
                answer = await http.fetch(
                    HTTPRequest(
                        url + "/v1/deposits",
                        method="POST",
                        body=orjson.dumps({"user_id": ack.user, "amount": format_kopecks(ack.amount)}),
                        headers={**headers, "Idempotency-Key": ack.key},
                    ),
                    raise_error=False,
                )
            if answer.code != 201:
                result.unexpected.append(f"replay {answer.code} {answer.body!r}")
            elif answer.headers.get("Idempotent-Replayed") != "true":
                result.lost += 1

        await asyncio.gather(*(replay(ack) for ack in result.acks))
    finally:
        http.close()


def table(results: list[RunResult]) -> str:
    head = (
        "| WAIT replicas | acknowledged | retries | lost (missing money) | users with extra money | failover s "
        "| p50 / p99 ms before the kill | p50 / p99 ms all | longest until acknowledged s | short WAITs |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        before, every = r.latencies(before_kill=True), r.latencies()
        rows.append(
            f"| {r.wait_replicas} | {len(r.acks)} | {r.retries} | {r.lost} ({format_kopecks(r.missing_kopecks)}) "
            f"| {r.doubled} ({format_kopecks(r.extra_kopecks)}) | {r.failover_seconds:.1f} "
            f"| {percentile(before, 0.5) * 1000:.1f} / {percentile(before, 0.99) * 1000:.1f} "
            f"| {percentile(every, 0.5) * 1000:.1f} / {percentile(every, 0.99) * 1000:.1f} "
            f"| {max((a.until_ack for a in r.acks), default=0):.2f} | {r.short_waits:.0f} |"
        )
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> int:
    results = []
    for wait in args.wait_replicas:
        result = await run_once(wait, args.seconds, args.clients)
        results.append(result)
        print(f"WAIT {wait}: done, {len(result.acks)} acknowledged", file=sys.stderr, flush=True)
    print(table(results))
    print()
    print("command: " + shlex.join([".venv/bin/python", "-m", "bench.failover", *sys.argv[1:]]))
    unexpected = [u for r in results for u in r.unexpected]
    if unexpected:
        print(f"answers outside the contract: {len(unexpected)}, first {unexpected[:3]}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="load per run (at least 3 s after failover)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--wait-replicas", type=int, choices=(0, 1), action="append", help="0, 1 or both (the default)")
    args = parser.parse_args()
    args.wait_replicas = args.wait_replicas or [0, 1]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
