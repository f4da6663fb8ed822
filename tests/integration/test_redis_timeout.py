"""Redis connections: a stalled Redis times out via the watchdog; a connection the server closed is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.core.config import Settings
from billing.infra.redis_watchdog import CHECK_EVERY_SECONDS, WatchedConnection
from billing.infra.stores import connect_redis
from tests.support.servers import RedisServer

TIMEOUT = 0.5


@pytest.fixture
def stallable_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # its own: the test stops and resumes the process
    yield server
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


async def test_a_stalled_redis_times_out_and_the_client_recovers(stallable_redis: RedisServer) -> None:
    redis = connect_redis(
        Settings(redis_url=stallable_redis.url, mongo_url="mongodb://unused", request_timeout_seconds=TIMEOUT)
    )
    try:
        assert await redis.set("k", "1")
        connection = await redis.connection_pool.get_connection()
        assert isinstance(connection, WatchedConnection)
        assert connection.socket_timeout is None and connection.stall_timeout == TIMEOUT  # no timer per command
        await redis.connection_pool.release(connection)

        os.kill(stallable_redis.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await redis.get("k")
        waited = time.monotonic() - started
        assert TIMEOUT <= waited < TIMEOUT + CHECK_EVERY_SECONDS + 1.0

        os.kill(stallable_redis.proc.pid, signal.SIGCONT)
        assert await redis.get("k") == b"1"  # a new connection replaces the aborted one
    finally:
        os.kill(stallable_redis.proc.pid, signal.SIGCONT)
        await redis.aclose()


async def test_commands_quicker_than_the_timeout_are_left_alone(stallable_redis: RedisServer) -> None:
    redis = connect_redis(
        Settings(redis_url=stallable_redis.url, mongo_url="mongodb://unused", request_timeout_seconds=TIMEOUT)
    )
    try:
        # A blocking read shorter than the timeout, spanning several watchdog checks, answers normally.
        reply = await redis.blpop(["empty-list"], timeout=TIMEOUT / 2)
        assert reply is None
        await asyncio.sleep(CHECK_EVERY_SECONDS * 2)  # idle connections are never aborted
        assert await redis.ping()
    finally:
        await redis.aclose()


async def test_a_pooled_connection_closed_by_the_server_is_replaced_before_use(
    stallable_redis: RedisServer,
) -> None:
    redis = connect_redis(Settings(redis_url=stallable_redis.url, mongo_url="mongodb://unused"))
    admin = connect_redis(Settings(redis_url=stallable_redis.url, mongo_url="mongodb://unused"))
    try:
        assert await redis.set("k", "2")
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        await asyncio.sleep(0.1)  # the loop sees the EOF of the idle pooled connection
        # No retries are configured (a script must never run twice), so this passes only if the pool's
        # check before reuse notices the closed connection and connects again.
        assert await redis.get("k") == b"2"
    finally:
        await redis.aclose()
        await admin.aclose()
