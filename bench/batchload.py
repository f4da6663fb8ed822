"""Batch throughput: concurrent POST /v1/batch requests of 1000 deposits each, bodies built beforehand."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest


@dataclass
class BatchResult:
    """Operations per second over the run, and how many operations did not answer 201."""

    ops_per_second: float
    batches: int
    operations: int
    failures: int
    seconds: float


def build_bodies(count: int, size: int, run_id: str, users: int) -> list[bytes]:
    bodies = []
    for b in range(count):
        operations = [
            {
                "op": "deposit",
                "idempotency_key": f"{run_id}-b{b}-{i}",
                "user_id": (b * size + i) % users + 1,
                "amount": "1.00",
                "comment": "bench",
            }
            for i in range(size)
        ]
        bodies.append(orjson.dumps({"operations": operations}))
    return bodies


async def _run(url: str, token: str, bodies: list[bytes], concurrency: int, seconds: float) -> BatchResult:
    client = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    queue = list(reversed(bodies))
    done = failures = operations = 0
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    async def sender() -> None:
        nonlocal done, failures, operations
        while queue and time.monotonic() < deadline:
            body = queue.pop()
            request = HTTPRequest(url + "/v1/batch", method="POST", body=body, headers=headers, request_timeout=120)
            response = await client.fetch(request, raise_error=False)
            results = orjson.loads(response.body)["results"] if response.code == 200 else []
            done += 1
            operations += len(results)
            failures += sum(1 for item in results if item["status"] != 201) + (0 if response.code == 200 else 1000)

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    client.close()
    return BatchResult(operations / elapsed, done, operations, failures, elapsed)


def run_batches(
    url: str, token: str, run_id: str, *, seconds: float, concurrency: int = 4, size: int = 1000, users: int = 1000
) -> BatchResult:
    """Send prepared batches from `concurrency` senders until `seconds` pass or the bodies run out."""
    bodies = build_bodies(max(8, int(seconds * 60)), size, run_id, users)  # enough for 60k ops/s
    return asyncio.run(_run(url, token, bodies, concurrency, seconds))
