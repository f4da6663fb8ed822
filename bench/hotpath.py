"""In-process micro-benchmark of one request's path: CPU µs per POST deposit and GET balance, service vs floor.

Drives the Tornado applications without sockets (a stand-in connection that swallows the response), against a
real redis-server, with metrics in multiprocess mode and the JSON access log on, as `billing serve --workers 2`
runs them. HTTP parsing and socket I/O are the same for the floor and the service and are left out, so the
difference between the two columns is exactly what the service adds per request. process_time() counts this
process only (not redis-server), so it hardly depends on other load on the machine. The Redis columns are
redis-server's own CPU per request (INFO cpu: Lua, commands and its event loop, one request at a time, so
no pipelining) and its time inside Lua per request (INFO commandstats: the service's FCALL, the floor's EVALSHA).

The batch line (--batches N) is the worker's CPU and redis-server's per operation of POST /v1/batch of 1000
deposits, each with a key of its own; it has no floor.

Run: python -m bench.hotpath [--requests 20000] [--cases deposit] [--batches 5] [--profile deposit|balance|batch]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

TOKEN = "bench-payments-token"
BATCH_SIZE = 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Connection:
    """Enough of tornado's HTTP1Connection for a handler to answer into."""

    def __init__(self) -> None:
        self.context = SimpleNamespace(remote_ip="127.0.0.1", protocol="http", address=("127.0.0.1", 1))
        self.status = 0
        self.size = 0
        self.finished = asyncio.get_running_loop().create_future()

    def set_close_callback(self, callback: Any) -> None:
        pass

    def set_max_body_size(self, size: int) -> None:
        pass

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> asyncio.Future:
        self.status = start_line.code
        self.size += len(chunk or b"")
        return self._done()

    def write(self, chunk: bytes) -> asyncio.Future:
        self.size += len(chunk)
        return self._done()

    def finish(self) -> None:
        self.finished.set_result(None)

    @staticmethod
    def _done() -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


# A driven application: (method, uri, headers, body) -> the answer's status.
Driver = Callable[[str, str, dict[str, str], bytes], Awaitable[int]]
Send = Callable[[int], Awaitable[int]]  # the i-th request of a case


def driver(app: Any) -> Driver:
    import tornado.httputil

    async def call(method: str, uri: str, headers: dict[str, str], body: bytes) -> int:
        # As Tornado's HTTP server drives an application: headers, then the body, then the end of the message
        # (the API handlers read bodies as they arrive, so a request is not handed over whole).
        connection = _Connection()
        delegate = app.start_request(None, connection)
        head = tornado.httputil.HTTPHeaders({"Host": "127.0.0.1", **headers})
        if body:
            head["Content-Length"] = str(len(body))
        for step in (
            lambda: delegate.headers_received(tornado.httputil.RequestStartLine(method, uri, "HTTP/1.1"), head),
            lambda: delegate.data_received(body) if body else None,
        ):
            pending = step()
            if pending is not None:
                await pending
        delegate.finish()
        await connection.finished
        return connection.status

    return call


def service_deposits(service: Driver, run: object) -> Send:
    """The i-th deposit through the service's driver: user i % 1000 + 1, an Idempotency-Key of its own (run
    makes the keys unique per process)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def deposit(i: int) -> Awaitable[int]:
        body = b'{"user_id": %d, "amount": "10.50", "comment": "bench"}' % (i % 1000 + 1)
        return service("POST", "/v1/deposits", {**headers, "Idempotency-Key": f"k-{run}-{i}"}, body)

    return deposit


def service_batches(service: Driver, run: object, count: int) -> Send:
    """POST /v1/batch of BATCH_SIZE deposits, `count` of them built beforehand, each operation with a key of its
    own (run makes the keys unique per process), as bench.batchload sends them; each body is sent once (a batch
    sent again would be all replays), whatever i is."""
    from bench.batchload import build_bodies

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = build_bodies(count, BATCH_SIZE, f"hp-{run}", users=1000)

    def batch(i: int) -> Awaitable[int]:
        return service("POST", "/v1/batch", headers, bodies.pop())

    return batch


def floor_deposits(floor: Driver) -> Send:
    """The i-th deposit through the floor's driver: user i % 1000 + 1."""

    def deposit(i: int) -> Awaitable[int]:
        body = b'{"user_id": %d, "amount": "10.50"}' % (i % 1000 + 1)
        return floor("POST", "/deposit", {"Content-Type": "application/json"}, body)

    return deposit


async def service_app(redis_url: str, access_stream: Any) -> Any:
    import logging

    from mongomock_motor import AsyncMongoMockClient

    from billing.app import make_app
    from billing.bootstrap import bootstrap
    from billing.core.config import Settings
    from billing.infra.observability import configure_access_log

    settings = Settings(
        redis_url=redis_url, mongo_url="mongodb://127.0.0.1:1", tokens={TOKEN: ["payments"]}, projector_enabled=False
    )
    # The money routes never read MongoDB; an in-memory one serves the sequence check at start().
    ctx = await bootstrap(settings, mongo=AsyncMongoMockClient(tz_aware=True)["bench"])
    await ctx.start()
    logging.getLogger().setLevel(logging.INFO)
    configure_access_log(access_stream)
    return make_app(ctx)


async def floor_app(redis_url: str) -> Any:
    import tornado.web
    from redis.asyncio import Redis

    from bench.floor_app import SCRIPT, BalanceHandler, DepositHandler

    redis = Redis.from_url(redis_url)
    args = {"redis": redis, "sha": await redis.script_load(SCRIPT)}
    return tornado.web.Application([(r"/deposit", DepositHandler, args), (r"/balance/([0-9]+)", BalanceHandler, args)])


class _RedisCpu:
    """redis-server's CPU seconds and its time in Lua, FCALL and EVALSHA (microseconds), from INFO."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url)

    async def read(self) -> tuple[float, float]:
        cpu = await self.redis.info("cpu")
        stats = await self.redis.info("commandstats")
        lua = sum(stats.get(f"cmdstat_{name}", {}).get("usec", 0) for name in ("fcall", "evalsha"))
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), float(lua)


async def _measure(
    name: str,
    requests: int,
    send: Send,
    expect: int,
    redis: _RedisCpu,
    warm_up: int = 500,
) -> tuple[float, float, float]:
    """CPU µs per request: this process, redis-server, redis-server inside Lua."""
    for i in range(warm_up):
        await send(i)
    redis_before, evalsha_before = await redis.read()
    started = time.process_time()
    for i in range(requests):
        status = await send(i)
        if status != expect:
            raise SystemExit(f"{name}: got status {status}, expected {expect}")
    worker = (time.process_time() - started) / requests * 1e6
    redis_after, evalsha_after = await redis.read()
    return worker, (redis_after - redis_before) / requests * 1e6, (evalsha_after - evalsha_before) / requests


async def main_async(args: argparse.Namespace) -> None:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="billing-hotpath-")
    redis_proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        access = open(os.devnull, "w")  # noqa: SIM115 - held for the whole run, like stderr
        service = driver(await service_app(url, access))
        floor = driver(await floor_app(url))
        from billing.server import settle_collector  # (after the apps: it loads prometheus_client)

        settle_collector()  # as a worker does once built (for both apps: they share this process)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        run = os.getpid()
        redis_cpu = _RedisCpu(url)

        deposit, floor_deposit = service_deposits(service, run), floor_deposits(floor)

        def balance(i: int) -> Awaitable[int]:
            return service("GET", f"/v1/users/{i % 1000 + 1}/balance", auth, b"")

        def floor_balance(i: int) -> Awaitable[int]:
            return floor("GET", f"/balance/{i % 1000 + 1}", {}, b"")

        cases = {
            "deposit": (deposit, 201, floor_deposit, 201),
            "balance": (balance, 200, floor_balance, 200),
        }
        cases = {name: case for name, case in cases.items() if name in args.cases}
        # the bodies built beforehand: one more than the measured runs send (a warm-up), one to profile, else none
        bodies = args.batches * args.repeat + 1 if args.batches else int(args.profile == "batch")
        batch = service_batches(service, run, bodies)
        for i in range(1000):  # every user has an account (and a floor balance) before any GET
            await deposit(i)
            await floor_deposit(i)
        if args.profile:
            send, expect, requests = (
                (batch, 200, args.batches or 1)
                if args.profile == "batch"
                else ((*cases[args.profile][:2], args.requests))
            )
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            await _measure(args.profile, requests, send, expect, redis_cpu, warm_up=0)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
            print(out.getvalue())
            return
        print(
            f"{'CPU µs per request':<22}{'service':>10}{'floor':>10}{'ratio':>8}"
            f"{'Redis':>10}{'floor':>8}{'Lua':>10}{'floor':>8}"
        )
        for name, (send, expect, floor_send, floor_expect) in cases.items():
            service_runs, floor_runs = [], []
            for _ in range(args.repeat):  # alternating, so a slower spell of the machine hits both sides
                service_runs.append(await _measure(name, args.requests, send, expect, redis_cpu))
                floor_runs.append(await _measure(name, args.requests, floor_send, floor_expect, redis_cpu))
            # the best run of each column (each is a lower bound of what the work costs)
            service_us, redis_us, evalsha_us = (min(column) for column in zip(*service_runs, strict=True))
            floor_us, floor_redis_us, floor_evalsha_us = (min(column) for column in zip(*floor_runs, strict=True))
            print(
                f"{name:<22}{service_us:>10.1f}{floor_us:>10.1f}{floor_us / service_us:>8.2f}"
                f"{redis_us:>10.1f}{floor_redis_us:>8.1f}{evalsha_us:>10.1f}{floor_evalsha_us:>8.1f}"
            )
        if args.batches:
            await batch(0)  # warm up
            runs = [await _measure("batch", args.batches, batch, 200, redis_cpu, warm_up=0) for _ in range(args.repeat)]
            worker_us, redis_us, evalsha_us = (min(column) / BATCH_SIZE for column in zip(*runs, strict=True))
            print(
                f"{'batch, per operation':<22}{worker_us:>10.1f}{'':>10}{'':>8}{redis_us:>10.1f}{'':>8}"
                f"{evalsha_us:>10.1f}   ({args.batches} x POST /v1/batch of {BATCH_SIZE} deposits)"
            )
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="take the best of this many runs")
    parser.add_argument("--cases", default="deposit,balance", help="which of deposit,balance to measure")
    parser.add_argument(
        "--batches", type=int, default=0, help=f"also this many POST /v1/batch of {BATCH_SIZE} deposits per run"
    )
    parser.add_argument("--profile", choices=["deposit", "balance", "batch"], help="cProfile one case instead")
    parser.add_argument("--sort", default="tottime", help="pstats sort key for --profile (tottime, cumulative)")
    parser.add_argument("--top", type=int, default=40, help="rows of --profile output")
    args = parser.parse_args(argv)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # as `billing serve --workers 2` runs the workers
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="billing-hotpath-metrics-")
    if "prometheus_client" in sys.modules:
        raise SystemExit("prometheus_client imported before the metrics directory was set")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
