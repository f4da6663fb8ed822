"""Connections to Redis and MongoDB: real servers from URLs, or embedded in-process fakes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from billing.core.config import Settings
from billing.infra import redis_raw
from billing.infra.redis_route import RedisClient

if TYPE_CHECKING:  # motor loads only when a MongoDB URL is given (connect_mongo)
    from motor.motor_asyncio import AsyncIOMotorDatabase

log = logging.getLogger("billing.infra.stores")

# The MongoDB database the service uses: motor's, or mongomock-motor's, which is typed as motor's class.
MongoDatabase: TypeAlias = "AsyncIOMotorDatabase[dict[str, Any]]"

T = TypeVar("T")


def awaited(call: Awaitable[T] | T) -> Awaitable[T]:
    """A redis.asyncio command, typed as what it is: redis-py types each command as sync-or-async."""
    return cast(Awaitable[T], call)


EMBEDDED_WARNING = (
    "BILLING_REDIS_URL/BILLING_MONGO_URL not set: using embedded in-memory stores. "
    "Data lives only in this process and is lost when it exits."
)


def connect_redis(settings: Settings) -> RedisClient:
    """The client of BILLING_REDIS_MODE: a Redis, a Redis Cluster (any node's URL), or the embedded fake."""
    if settings.redis_url and settings.redis_mode == "cluster":
        # No retries here either: redis-py's cluster client then never sends a command again after a
        # connection error (it still follows MOVED and ASK, which mean the node did not run the command).
        return RedisCluster.from_url(
            settings.redis_url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=settings.request_timeout_seconds,
            socket_connect_timeout=min(settings.request_timeout_seconds, 2.0),
            max_connections=256,  # per node
        )
    if settings.redis_url:
        # No automatic retries: a script re-sent after a lost reply could move money twice.
        # Callers retry with their Idempotency-Key instead.
        return Redis.from_url(
            settings.redis_url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=settings.request_timeout_seconds,
            socket_connect_timeout=min(settings.request_timeout_seconds, 2.0),
            max_connections=256,
        )
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def connect_node(settings: Settings) -> Redis:
    """A client of the one node BILLING_REDIS_URL names (under Redis Cluster: for pub/sub, which reaches every
    node's subscribers)."""
    assert settings.redis_url
    return Redis.from_url(settings.redis_url, socket_connect_timeout=min(settings.request_timeout_seconds, 2.0))


async def close_redis(redis: RedisClient) -> None:
    """Close a client of connect_redis() with the hot path's idle connections of it."""
    if isinstance(redis, Redis):
        redis_raw.close(redis)
    await redis.aclose()


def connect_mongo(settings: Settings) -> MongoDatabase:
    """The MongoDB database object (motor, or mongomock-motor when embedded)."""
    if settings.mongo_url:
        from motor.motor_asyncio import AsyncIOMotorClient

        client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
            settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
        )
    else:
        from mongomock_motor import AsyncMongoMockClient

        client = AsyncMongoMockClient(tz_aware=True)
    return client[settings.mongo_db]
