"""Webhook delivery against a sustained deposit load: the ledger's ingest rate next to the webhook's delivery
rate (events/s), the dispatcher's own CPU per event, and the delay from a deposit's answer to its event's
arrival at the receiver (median, p99).

One process serves the API (a real redis-server of its own on a free port, and for MongoDB a SecantusDB
server, the tests' MongoDB wire server, in memory) with the projector and the webhook dispatcher running in
it, as one `billing serve` worker does. A second
process sends paced deposits over HTTP and notes when each was answered; a third is the receiver, answering
every delivery 200 at once and noting when each event arrived. Traffic stays on 127.0.0.1.

The dispatcher's CPU is the thread CPU time spent inside its delivery tasks (each resumption of a task timed),
which holds its feed reads (the client side of them), rendering, signing and Redis bookkeeping; the HTTP
client's own connection callbacks run outside those tasks and are not in it, nor is SecantusDB's work.

    .venv/bin/python -m bench.webhooks_bench --seconds 30 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Coroutine, Generator
from typing import Any

import orjson
import tornado.httpserver
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from billing.app import make_app
from billing.bootstrap import bootstrap
from billing.core.config import Settings
from billing.core.schemas import WebhookRequest
from billing.webhooks.dispatcher import HttpSender, WebhookDispatcher
from tests.support.servers import MongoWireServer, RedisServer, free_port

TOKEN = "bench-payments"
USERS = 500


# ---- the receiver and the load (their own processes) --------------------------------------------------------


def receiver_main(port: int, ready: Any) -> None:
    arrivals: dict[int, float] = {}

    class Hook(tornado.web.RequestHandler):
        def post(self) -> None:
            now = time.time()
            for event in orjson.loads(self.request.body)["events"]:
                arrivals.setdefault(int(event["id"]), now)
            self.finish(b"ok")

        def get(self) -> None:
            self.finish(orjson.dumps(arrivals, option=orjson.OPT_NON_STR_KEYS))

    async def main() -> None:
        tornado.web.Application([(r"/hook", Hook)]).listen(port, "127.0.0.1")
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def load_main(base: str, seconds: float, rate: float, results: Any) -> None:
    """Deposits at `rate` per second for `seconds`, up to 32 in flight; (transaction id, answered at) each."""

    async def main() -> tuple[list[tuple[int, float]], float]:
        client = AsyncHTTPClient(force_instance=True, max_clients=32)
        answered: list[tuple[int, float]] = []
        gate = asyncio.Semaphore(32)
        start = time.monotonic()

        async def one(n: int) -> None:
            body = orjson.dumps({"user_id": n % USERS + 1, "amount": "1.00"})
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            try:
                r = await client.fetch(HTTPRequest(base + "/v1/deposits", "POST", headers, body), raise_error=False)
                if r.code == 201:
                    answered.append((int(orjson.loads(r.body)["transaction"]["id"]), time.time()))
            finally:
                gate.release()

        tasks = []
        n = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while n < due:
                await gate.acquire()
                tasks.append(asyncio.create_task(one(n)))
                n += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        client.close()
        return answered, time.monotonic() - start

    results.put(asyncio.run(main()))


# ---- the dispatcher's CPU ------------------------------------------------------------------------------------


class Timed(Coroutine[Any, Any, Any]):
    """A coroutine whose every resumption is timed in thread CPU time (what its own code spends)."""

    total = 0.0

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro

    def _timed(self, step: Any, *args: Any) -> Any:
        started = time.thread_time()
        try:
            return step(*args)
        finally:
            Timed.total += time.thread_time() - started

    def send(self, value: Any) -> Any:
        return self._timed(self.coro.send, value)

    def throw(self, *args: Any) -> Any:  # type: ignore[override]
        return self._timed(self.coro.throw, *args)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)


class TimedDispatcher(WebhookDispatcher):
    def serve(self, name: str, token: str) -> Any:  # type: ignore[override]
        return Timed(super().serve(name, token))


# ---- the run -------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    redis_server = RedisServer().start()
    mongo_server = MongoWireServer().start()
    spawn = multiprocessing.get_context("spawn")
    receiver_port = free_port()
    ready = spawn.Event()
    receiver = spawn.Process(target=receiver_main, args=(receiver_port, ready), daemon=True)
    receiver.start()
    try:
        settings = Settings(
            redis_url=redis_server.url,
            mongo_url=mongo_server.url,
            tokens={TOKEN: ["payments"]},
            secret="bench-secret",
            webhook_allow_private=True,
            log_requests=False,
            _env_file=None,
        )
        ctx = await bootstrap(settings)
        ctx.webhook_dispatcher = TimedDispatcher(ctx.webhooks.store, ctx.events, HttpSender(True))
        await ctx.start()
        port = free_port()
        server = tornado.httpserver.HTTPServer(make_app(ctx))
        server.listen(port, "127.0.0.1")
        ready.wait(10)
        await ctx.webhooks.put("bench", WebhookRequest(url=f"http://127.0.0.1:{receiver_port}/hook"))
        results = spawn.Queue()
        load = spawn.Process(target=load_main, args=(f"http://127.0.0.1:{port}", args.seconds, args.rate, results))
        cpu0, timed0 = time.process_time(), Timed.total
        load.start()
        lags: list[float] = []

        async def sample_lag() -> None:  # how far projection (the feed's source) is behind, while the load runs
            while True:
                with contextlib.suppress(Exception):
                    lags.append(float((await ctx.projector.lag()).get("oldest_age_seconds", 0.0)))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_lag())
        loop = asyncio.get_running_loop()
        answered, load_seconds = await loop.run_in_executor(None, results.get)
        await loop.run_in_executor(None, load.join)
        sampler.cancel()
        client = AsyncHTTPClient(force_instance=True)
        stats_url = f"http://127.0.0.1:{receiver_port}/hook"
        arrivals: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the tail of deliveries after the load ends
            arrivals = orjson.loads((await client.fetch(stats_url)).body)
            if len(arrivals) >= len(answered):
                break
            await asyncio.sleep(0.2)
        cpu, timed = time.process_time() - cpu0, Timed.total - timed0
        client.close()
        server.stop()
        await ctx.stop()
    finally:
        receiver.kill()
        redis_server.stop()
        mongo_server.stop()
    delays = [arrivals[str(i)] - at for i, at in answered if str(i) in arrivals]
    first = min(at for _, at in answered)
    in_window = sum(1 for t in arrivals.values() if t - first <= load_seconds)
    return {
        "deposits": len(answered),
        "delivered": len(delays),
        "load_seconds": load_seconds,
        "ingest_per_s": len(answered) / load_seconds,
        "delivered_in_window_per_s": in_window / load_seconds,
        "dispatcher_cpu_us_per_event": timed / max(1, len(delays)) * 1e6,
        "process_cpu_us_per_event": cpu / max(1, len(answered)) * 1e6,
        "delay_median_ms": statistics.median(delays) * 1000,
        "delay_p99_ms": percentile(delays, 0.99) * 1000,
        "delay_max_ms": max(delays) * 1000,
        "projection_lag_median_ms": statistics.median(lags) * 1000 if lags else 0.0,
        "projection_lag_max_ms": max(lags) * 1000 if lags else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the deposit load")
    parser.add_argument("--rate", type=float, default=200.0, help="deposits per second offered")
    args = parser.parse_args(argv)
    r = asyncio.run(run(args))
    print(f"deposits answered      {r['deposits']} in {r['load_seconds']:.1f} s")
    print(f"ledger ingest          {r['ingest_per_s']:.0f} events/s")
    print(
        f"webhook delivery       {r['delivered_in_window_per_s']:.0f} events/s during the load "
        f"({r['delivered_in_window_per_s'] / r['ingest_per_s']:.2f} of ingest); {r['delivered']} of "
        f"{r['deposits']} delivered in the end"
    )
    print(f"dispatcher CPU         {r['dispatcher_cpu_us_per_event']:.0f} µs per event (its own tasks)")
    print(f"service process CPU    {r['process_cpu_us_per_event']:.0f} µs per deposit (API, projector, dispatcher)")
    print(
        f"answer -> delivery     median {r['delay_median_ms']:.0f} ms, p99 {r['delay_p99_ms']:.0f} ms, "
        f"max {r['delay_max_ms']:.0f} ms (targets: median < 1000, p99 < 2000)"
    )
    print(
        f"projection lag         median {r['projection_lag_median_ms']:.0f} ms, max "
        f"{r['projection_lag_max_ms']:.0f} ms (the oldest outbox entry not yet in MongoDB, sampled every 0.5 s)"
    )


if __name__ == "__main__":
    main()
