"""Redis connections: a stalled Redis times out (the hot path's via the watchdog); a closed connection is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.core.config import Settings
from billing.infra import redis_raw
from billing.infra.redis_raw import CHECK_EVERY_SECONDS, pack
from billing.infra.stores import connect_redis
from tests.support.servers import RedisServer

TIMEOUT = 0.5


@pytest.fixture
def stallable_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # its own: the test stops and resumes the process
    yield server
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def _settings(server: RedisServer, timeout: float = TIMEOUT) -> Settings:
    return Settings(redis_url=server.url, mongo_url="mongodb://unused", request_timeout_seconds=timeout)


async def test_a_stalled_redis_times_out_and_the_client_recovers(stallable_redis: RedisServer) -> None:
    redis = connect_redis(_settings(stallable_redis))
    try:
        assert await redis_raw.command(redis, pack(["SET", "k", "1"])) == b"OK"

        os.kill(stallable_redis.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await redis_raw.command(redis, pack(["GET", "k"]))
        waited = time.monotonic() - started
        assert TIMEOUT <= waited < TIMEOUT + CHECK_EVERY_SECONDS + 1.0
        with pytest.raises(RedisTimeoutError):  # redis-py's own commands: its socket_timeout
            await redis.get("k")

        os.kill(stallable_redis.proc.pid, signal.SIGCONT)
        assert await redis_raw.command(redis, pack(["GET", "k"])) == b"1"  # a new connection
        assert await redis.get("k") == b"1"
    finally:
        os.kill(stallable_redis.proc.pid, signal.SIGCONT)
        redis_raw.close(redis)
        await redis.aclose()


async def test_commands_quicker_than_the_timeout_are_left_alone(stallable_redis: RedisServer) -> None:
    redis = connect_redis(_settings(stallable_redis))
    try:
        # A blocking read shorter than the timeout, spanning several watchdog checks, answers normally.
        reply = await redis_raw.command(redis, pack(["BLPOP", "empty-list", str(TIMEOUT / 2)]))
        assert reply is None
        await asyncio.sleep(CHECK_EVERY_SECONDS * 2)  # idle connections are never aborted
        assert await redis_raw.command(redis, pack(["CLIENT", "ID"])) == await redis_raw.command(
            redis, pack(["CLIENT", "ID"])
        )
    finally:
        redis_raw.close(redis)
        await redis.aclose()


async def test_a_kept_connection_closed_by_the_server_is_replaced_before_use(
    stallable_redis: RedisServer,
) -> None:
    redis = connect_redis(_settings(stallable_redis, timeout=2.0))
    admin = connect_redis(_settings(stallable_redis, timeout=2.0))
    try:
        assert await redis_raw.command(redis, pack(["SET", "k", "2"])) == b"OK"
        assert await redis.set("k", "2")
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 2
        await asyncio.sleep(0.1)  # the loop sees the EOF of the idle connections
        # No retries anywhere (a script must never run twice), so these pass only if the checks before reuse
        # notice the closed connections and connect again.
        assert await redis_raw.command(redis, pack(["GET", "k"])) == b"2"
        assert await redis.get("k") == b"2"
    finally:
        redis_raw.close(redis)
        await redis.aclose()
        await admin.aclose()
