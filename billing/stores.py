"""Connections to Redis and MongoDB: real servers from URLs, or embedded in-process fakes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.config import Settings

log = logging.getLogger("billing.stores")

EMBEDDED_WARNING = (
    "BILLING_REDIS_URL/BILLING_MONGO_URL not set: using embedded in-memory stores. "
    "Data lives only in this process and is lost when it exits."
)


class TimedConnection(Connection):
    """Writes time out as in redis-py, but through asyncio.timeout instead of wait_for's extra task (16 µs a command)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if not timeout:
            await super().send_packed_command(command, check_health)
            return
        self.socket_timeout = None  # redis-py would wrap the write in wait_for; the timeout is ours here
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:  # the write was cancelled; redis-py disconnected the connection on the way out
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


def connect_redis(settings: Settings) -> Redis:
    if settings.redis_url:
        # No automatic retries: a script re-sent after a lost reply could move money twice.
        # Callers retry with their Idempotency-Key instead.
        return Redis.from_url(
            settings.redis_url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=settings.request_timeout_seconds,
            socket_connect_timeout=min(settings.request_timeout_seconds, 2.0),
            max_connections=256,
            connection_class=TimedConnection,
        )
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def connect_mongo(settings: Settings) -> Any:
    """The MongoDB database object (motor, or mongomock-motor when embedded)."""
    if settings.mongo_url:
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(
            settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
        )
    else:
        from mongomock_motor import AsyncMongoMockClient

        client = AsyncMongoMockClient(tz_aware=True)
    return client[settings.mongo_db]
