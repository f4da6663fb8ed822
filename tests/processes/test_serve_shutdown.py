"""`billing serve` as a real process: one metrics answer across workers; SIGTERM loses no acknowledged request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from billing.ledger.scripts import RedisKeys
from tests.support.api import TEST_TOKENS
from tests.support.servers import MongoWireServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPOSITS = 300
CONCURRENCY = 40
PAUSE_MS = 1000


class Service:
    """A `billing serve` child process on a free port, with its stderr kept in a file."""

    def __init__(self, tmp: Path, redis_url: str, mongo_url: str, workers: int) -> None:
        self.port = free_port()
        self.prefix = f"test:{uuid.uuid4().hex[:12]}:"
        config = tmp / "empty.env"
        config.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(
            BILLING_CONFIG_FILE=str(config),
            BILLING_REDIS_URL=redis_url,
            BILLING_MONGO_URL=mongo_url,
            BILLING_MONGO_DB=f"billing_{uuid.uuid4().hex[:8]}",
            BILLING_REDIS_PREFIX=self.prefix,
            BILLING_TOKENS=orjson.dumps(TEST_TOKENS).decode(),
            BILLING_SECRET="test-secret",
            BILLING_REPORTS_DIR=str(tmp / "reports"),
        )
        self.stderr_path = tmp / "serve.stderr"
        self.stderr = self.stderr_path.open("wb")
        args = [sys.executable, "-m", "billing", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*args, "--workers", str(workers)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


async def fetch(client: AsyncHTTPClient, url: str, **kwargs: Any) -> Any:
    return await client.fetch(HTTPRequest(url, request_timeout=30, **kwargs), raise_error=False)


async def wait_ready(service: Service, client: AsyncHTTPClient) -> int:
    """Polls /healthz until it answers; returns how many 200s it got (they count in the metrics)."""
    deadline = time.monotonic() + 30
    while True:
        assert service.proc.poll() is None, service.log()
        try:
            r = await client.fetch(service.base + "/healthz", raise_error=False, request_timeout=5)
            if r.code == 200:
                return 1
        except (OSError, HTTPClientError):
            pass
        assert time.monotonic() < deadline, service.log()
        await asyncio.sleep(0.1)


def healthz_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "billing_http_requests_total" and sample.labels == {
                "route": "/healthz",
                "method": "GET",
                "status": "200",
            }:
                return sample.value
    return 0.0


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_metrics_and_graceful_sigterm(
    workers: int, tmp_path: Path, redis_server: RedisServer, mongo_server: MongoWireServer
) -> None:
    service = Service(tmp_path, redis_server.url, mongo_server.url, workers)
    client = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY)
    try:
        probes = await wait_ready(service, client)

        # Every worker answers /metrics with the count of all workers.
        for _ in range(30):
            assert (await fetch(client, service.base + "/healthz")).code == 200
        # Workers write their metric updates 50 ms after a request (billing/infra/metrics.py): once a scrape counts
        # every request (so every worker has written), each scrape, whichever worker answers, does.
        deadline = asyncio.get_running_loop().time() + 5
        while asyncio.get_running_loop().time() < deadline:
            r = await fetch(client, service.base + "/metrics")
            if healthz_count(r.body.decode()) == 30 + probes:
                break
            await asyncio.sleep(0.05)
        for _ in range(8):
            r = await fetch(client, service.base + "/metrics")
            assert r.code == 200
            assert healthz_count(r.body.decode()) == 30 + probes

        # Many concurrent deposits with idempotency keys; SIGTERM while they are in flight.
        base_user = int(uuid.uuid4().int % 10**12) * 1000 + 1
        results: dict[int, int | str] = {}
        sent = 0
        signalled = asyncio.Event()
        after_signal: list[int] = []

        async def deposit(i: int) -> None:
            headers = {
                "Authorization": "Bearer tok-payments",
                "Content-Type": "application/json",
                "Idempotency-Key": f"shutdown-{base_user}-{i}",
            }
            body = orjson.dumps({"user_id": base_user + i, "amount": f"{i + 1}.25"})
            try:
                r = await fetch(client, service.base + "/v1/deposits", method="POST", headers=headers, body=body)
                results[i] = r.code
                if r.code == 201:
                    assert r.body and orjson.loads(r.body)["balance"]["available"] == f"{i + 1}.25"
                    if signalled.is_set():
                        after_signal.append(i)
            except (OSError, HTTPClientError) as exc:
                results[i] = type(exc).__name__

        async def sender() -> None:
            nonlocal sent
            queue = iter(range(DEPOSITS))

            async def loop() -> None:
                nonlocal sent
                for i in queue:
                    sent += 1
                    await deposit(i)

            await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))

        task = asyncio.create_task(sender())
        while len(results) < DEPOSITS // 3:
            await asyncio.sleep(0.005)
        # Hold every script in Redis for a moment so that requests are surely in flight at SIGTERM:
        # they must still get their answers (the drain waits for them; closing at once would cut them off).
        store = redis.Redis.from_url(redis_server.url)
        store.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
        store.close()
        await asyncio.sleep(0.3)
        service.proc.send_signal(signal.SIGTERM)
        signalled.set()
        await task
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: service.proc.wait(timeout=30))
        assert code == 0, service.log()

        acknowledged = [i for i, status in results.items() if status == 201]
        assert len(acknowledged) >= DEPOSITS // 3
        assert len(acknowledged) < DEPOSITS, "SIGTERM came after every request: the test proved nothing"
        assert len(after_signal) >= CONCURRENCY // 2, (len(after_signal), service.log())
        assert all(status == 201 or isinstance(status, str) or status == 599 for status in results.values()), results
        keys = RedisKeys(service.prefix)
        store = redis.Redis.from_url(redis_server.url)
        try:
            for i in acknowledged:  # every 201 is in the balance
                assert store.hget(keys.account(base_user + i), "available") == str((i + 1) * 100 + 25).encode(), i
        finally:
            store.close()
        log = service.log()
        assert "stopping: no new connections" in log
        assert "Traceback" not in log, log
        assert "tok-payments" not in log
        print(f"workers={workers}: {len(acknowledged)} acknowledged, {len(after_signal)} after SIGTERM")
    finally:
        client.close()
        service.stop()
