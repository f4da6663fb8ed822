"""The floor: the least a Tornado + Redis service can do per request, served like `billing serve`.

POST /deposit parses a small JSON body and runs one Lua script (HINCRBY + XADD) by EVALSHA;
GET /balance/<id> does one HGETALL. Same pre-fork model (bind, fork N workers sharing the socket,
one asyncio loop each), same sockets (billing.server.bind_worker_sockets), same redis-py + hiredis client, same orjson. No auth, no validation,
no idempotency, no rendering: what the service adds on top of this is what the benchmark measures.

Run: python -m bench.floor_app --port 8101 --workers 2 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import orjson
import tornado.httpserver
import tornado.web
from redis.asyncio import Redis

from billing.server import bind_worker_sockets

SCRIPT = """
local balance = redis.call('HINCRBY', KEYS[1], 'available', ARGV[2])
local id = redis.call('XADD', KEYS[2], '*', 'user_id', ARGV[1], 'amount', ARGV[2])
return {balance, id}
"""


class DepositHandler(tornado.web.RequestHandler):
    def initialize(self, redis: Redis, sha: str) -> None:
        self.redis = redis
        self.sha = sha

    async def post(self) -> None:
        body = orjson.loads(self.request.body)
        user_id = int(body["user_id"])
        balance, _ = await self.redis.evalsha(self.sha, 2, f"floor:{{u:{user_id}}}:acct", "floor:outbox", user_id, 100)
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"user_id": user_id, "available": int(balance)}))


class BalanceHandler(tornado.web.RequestHandler):
    def initialize(self, redis: Redis, sha: str) -> None:
        self.redis = redis

    async def get(self, raw_id: str) -> None:
        raw = await self.redis.hgetall(f"floor:{{u:{int(raw_id)}}}:acct")
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({k.decode(): int(v) for k, v in raw.items()}))


async def worker(sockets: list, redis_url: str) -> None:
    redis = Redis.from_url(redis_url, max_connections=256)
    sha = await redis.script_load(SCRIPT)
    args = {"redis": redis, "sha": sha}
    app = tornado.web.Application([(r"/deposit", DepositHandler, args), (r"/balance/([0-9]+)", BalanceHandler, args)])
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    slots = bind_worker_sockets(args.host, args.port, args.workers)  # the service's own socket layout
    children = []
    for slot in range(args.workers):
        pid = os.fork()
        if pid == 0:
            asyncio.run(worker(slots[slot], args.redis_url))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in children:
        os.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
