"""Soak of reservation expiry: a real Redis, SecantusDB and `billing serve` with its projector, for N minutes.

Clients reserve at a steady rate with a short expires_in (2-5 s); about one in ten reservations is abandoned,
the rest are recognized (partly or wholly) or cancelled before their deadline. Closed reservations' records
live BILLING_RESERVATION_CLOSED_TTL_SECONDS and BILLING_RESERVATION_RECOGNIZED_TTL_SECONDS (short here), so
Redis should not grow. Every 10 s the run samples Redis used_memory and how many reservations are still in the
expiry indexes more than 1 s past their deadline. At the end it waits out the last deadlines and reports:

- reservations past their deadline and not released (must be 0), and the most seen during the run;
- how long after its deadline each abandoned reservation was released (the release's created_at minus the
  deadline, from MongoDB: p50, p99, max);
- Redis used_memory at the start (after a minute), the middle and the end;
- the CPU the service, Redis and SecantusDB used (cores);
- `billing reconcile` (exit 0: Redis equals the ledger).

    .venv/bin/python -m bench.soak_expiry --minutes 10 --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pymongo
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from bench.procs import BENCH_TOKEN, process_cpu_seconds, start_service
from billing.core.config import default
from billing.ledger.scripts import RedisKeys
from tests.support.servers import MongoWireServer, RedisServer

USERS = 200
CLOSED_TTL_SECONDS = 30
OVERDUE_MS = 1_000  # a reservation still indexed this long after its deadline is late


class Soak:
    def __init__(self, url: str, rate: float, seed: int = 5) -> None:
        self.url = url
        self.rate = rate
        self.rng = random.Random(seed)
        self.http = AsyncHTTPClient(force_instance=True, max_clients=256)
        self.order = 0
        self.counts: dict[str, int] = {}
        self.abandoned: set[int] = set()  # order ids nobody closes: only a sweeper releases them
        self.tasks: set[asyncio.Task[None]] = set()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = HTTPRequest(
            self.url + path,
            method="POST",
            body=orjson.dumps(body),
            headers={"Authorization": f"Bearer {BENCH_TOKEN}", "Content-Type": "application/json"},
            request_timeout=30,
        )
        answer = await self.http.fetch(request, raise_error=False)
        return answer.code, orjson.loads(answer.body) if answer.body else {}

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    async def one(self) -> None:
        self.order += 1
        user, expires_in = self.rng.randint(1, USERS), self.rng.randint(2, 5)
        amount = self.rng.randint(100, 50_000)
        ref = {"user_id": user, "service_id": self.rng.randint(1, 5), "order_id": self.order}
        body = {**ref, "amount": f"{amount // 100}.{amount % 100:02d}", "expires_in": expires_in}
        status, _ = await self.post("/v1/reservations", body)
        self.count(f"reserve:{status}")
        if status != 201:
            return
        roll = self.rng.random()
        if roll < 0.1:
            self.count("abandoned")
            self.abandoned.add(ref["order_id"])
            return
        await asyncio.sleep(self.rng.uniform(0.1, expires_in - 0.7))  # before the deadline
        if roll < 0.6:
            charge = self.rng.randint(1, amount)
            path, close = "/v1/reservations/recognize", {**ref, "amount": f"{charge // 100}.{charge % 100:02d}"}
        else:
            path, close = "/v1/reservations/cancel", ref
        status, answer = await self.post(path, close)
        self.count(f"{path.rsplit('/', 1)[1]}:{status}:{answer.get('code', '')}")

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while (now := loop.time()) < start + seconds:
            due = int((now - start) * self.rate) - sent
            for _ in range(max(0, due)):
                task = asyncio.create_task(self.one())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                sent += 1
            await asyncio.sleep(0.02)
        await asyncio.gather(*list(self.tasks))


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def overdue(client: redis.Redis, keys: RedisKeys) -> int:
    """Reservations still in the expiry indexes more than OVERDUE_MS past their deadline (by Redis's clock)."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    return sum(int(client.zcount(keys.expiry(p), "-inf", now_ms - OVERDUE_MS)) for p in keys.all())


def release_delays(mongo_url: str, db: str) -> dict[int, int]:
    """For each release of an expired reservation, by order id: its created_at minus its reserve's expires_at (ms)."""
    client = pymongo.MongoClient(mongo_url)
    try:
        transactions = client[db]["transactions"]
        deadlines = {
            (d["user_id"], d["service_id"], d["order_id"]): d["expires_at"]
            for d in transactions.find(
                {"type": "reserve"}, {"user_id": 1, "service_id": 1, "order_id": 1, "expires_at": 1}
            )
        }
        delays = {}
        for d in transactions.find({"type": "release", "reason": "expired"}):
            deadline = deadlines[(d["user_id"], d["service_id"], d["order_id"])]
            delays[int(d["order_id"])] = int((d["created_at"] - deadline).total_seconds() * 1000)
        return delays
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="reservations per second")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    redis_server = RedisServer().start()
    mongo = MongoWireServer().start()
    log = tempfile.NamedTemporaryFile(prefix="soak-expiry-", suffix=".log", delete=False)
    env = {
        "BILLING_TOKENS": json.dumps({BENCH_TOKEN: ["payments", "orders"]}),
        "BILLING_RESERVATION_CLOSED_TTL_SECONDS": str(CLOSED_TTL_SECONDS),
        "BILLING_RESERVATION_RECOGNIZED_TTL_SECONDS": str(CLOSED_TTL_SECONDS),
        "BILLING_LOG_REQUESTS": "false",
        "BILLING_MONGO_DB": "soak",
    }
    service = start_service(redis_server.url, mongo.url, args.workers, log, env)
    client = redis.Redis(port=redis_server.port)
    keys = RedisKeys("billing:", default("partitions"))
    try:
        service.wait_ready(args.workers)
        soak = Soak(service.url, args.rate)

        async def fund() -> None:
            for user in range(1, USERS + 1):
                status, _ = await soak.post("/v1/deposits", {"user_id": user, "amount": "100000000.00"})
                assert status == 201, status

        asyncio.run(fund())
        seconds = args.minutes * 60
        samples: list[tuple[float, int, int]] = []  # (elapsed s, used_memory, overdue)
        cpu = {"service": service.cpu_seconds(), "redis": 0.0, "mongo": 0.0}
        assert redis_server.proc is not None and mongo.proc is not None
        cpu["redis"], cpu["mongo"] = process_cpu_seconds(redis_server.proc.pid), process_cpu_seconds(mongo.proc.pid)
        started = time.monotonic()

        async def sample() -> None:
            while time.monotonic() - started < seconds:
                await asyncio.sleep(10)
                row = (time.monotonic() - started, used_memory(client), overdue(client, keys))
                samples.append(row)
                print(f"  {row[0]:6.0f} s  used_memory {row[1]:>12,}  overdue {row[2]}", flush=True)

        async def both() -> None:
            await asyncio.gather(soak.run(seconds), sample())

        asyncio.run(both())
        elapsed = time.monotonic() - started
        service_cpu = service.cpu_seconds() - cpu["service"]
        redis_cpu = process_cpu_seconds(redis_server.proc.pid) - cpu["redis"]
        mongo_cpu = process_cpu_seconds(mongo.proc.pid) - cpu["mongo"]
        time.sleep(5 + 1.5)  # the last deadlines (at most 5 s away) and a sweep
        past = overdue(client, keys)
        still_reserved = 0
        for key in client.scan_iter(match=keys.reservation_pattern(), count=1000):
            if client.hget(key, "status") == b"reserved":
                expires_at = int(client.hget(key, "expires_at") or 0)
                seconds_now, micros = client.time()
                still_reserved += expires_at <= seconds_now * 1000 + micros // 1000
        time.sleep(3)  # the projector's last batches
        by_order = release_delays(mongo.url, "soak")
        swept = sorted(delay for order, delay in by_order.items() if order in soak.abandoned)
        late = sorted(delay for order, delay in by_order.items() if order not in soak.abandoned)
        load = os.getloadavg()
        done = subprocess.run(
            [sys.executable, "-m", "billing", "reconcile", "--drain-timeout", "600"],
            env={**os.environ, **service_env(redis_server.url, mongo.url, env)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        first = next((s for s in samples if s[0] >= 60), samples[0] if samples else (0, 0, 0))
        middle = samples[len(samples) // 2] if samples else (0, 0, 0)
        end = samples[-1] if samples else (0, 0, 0)
        print(f"soak_expiry: {args.minutes} min at {args.rate}/s reservations, {args.workers} worker(s)")
        print(f"  operations: {dict(sorted(soak.counts.items()))}")
        print(f"  past their deadline and not released at the end: {past} in the indexes, {still_reserved} records")
        print(
            f"  most in the indexes more than {OVERDUE_MS} ms past their deadline at a sample: "
            f"{max((s[2] for s in samples), default=0)}"
        )
        for what, delays in (("abandoned (by a sweeper)", swept), ("closed by their client too late", late)):
            if delays:
                p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
                print(
                    f"  expired releases, {what}: {len(delays)}; created_at - expires_at "
                    f"p50 {statistics.median(delays):.0f} ms, p99 {p99} ms, max {delays[-1]} ms"
                )
        print(f"  load average at the end (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"  Redis used_memory: start (1 min) {first[1]:,}, middle {middle[1]:,}, end {end[1]:,} bytes")
        print(
            f"  CPU: service {service_cpu / elapsed:.2f}, Redis {redis_cpu / elapsed:.2f}, "
            f"SecantusDB {mongo_cpu / elapsed:.2f} cores"
        )
        print(f"  reconcile exit {done.returncode}: {done.stdout.strip()} {done.stderr.strip()[-300:]}")
        return 0 if past == 0 and still_reserved == 0 and done.returncode == 0 else 1
    finally:
        client.close()
        service.stop()
        mongo.stop()
        redis_server.stop()
        Path(log.name).unlink(missing_ok=True)


def service_env(redis_url: str, mongo_url: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        "BILLING_REDIS_URL": redis_url,
        "BILLING_MONGO_URL": mongo_url,
        "BILLING_CONFIG_FILE": "/dev/null",
        "BILLING_LOG_LEVEL": "WARNING",
        **extra,
    }


if __name__ == "__main__":
    sys.exit(main())
