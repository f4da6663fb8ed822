"""Snapshots of everything the service keeps in Redis under one prefix, to prove a request changed nothing."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from billing.ledger.scripts import RedisKeys

# The projectors' registry and partition leases (billing/projection/leases.py): renewed and taken on the
# projectors' own schedule, not by any request.
PROJECTOR_BOOKKEEPING = (b"projectors", b"projector:lease")


async def redis_state(redis: Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under the prefix with its full value (hashes, strings, streams, sets), TTLs left out; not the
    projectors' registry and leases."""
    state: dict[bytes, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        if key.endswith(PROJECTOR_BOOKKEEPING):
            continue
        kind = await redis.type(key)
        if kind == b"hash":
            state[key] = await redis.hgetall(key)
        elif kind == b"string":
            state[key] = await redis.get(key)
        elif kind == b"stream":
            state[key] = [(entry_id, fields) for entry_id, fields in await redis.xrange(key)]
        elif kind == b"set":
            state[key] = await redis.smembers(key)
        elif kind == b"zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            state[key] = await redis.lrange(key, 0, -1)
        else:  # pragma: no cover - the service writes no other kind
            state[key] = kind
    return state


def changed_keys(before: dict[bytes, Any], after: dict[bytes, Any]) -> list[bytes]:
    """Keys added, removed or changed between two snapshots (empty: nothing changed)."""
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


async def outbox_entries(redis: Redis, keys: RedisKeys) -> int:
    """Entries in the outbox streams of every partition."""
    return sum([int(await redis.xlen(keys.outbox(partition))) for partition in keys.all()])


async def last_sequences(redis: Redis, keys: RedisKeys) -> int:
    """The partitions' sequence numbers added up: how many transaction ids were taken (the projector trims the
    outboxes)."""
    return sum([int(await redis.hget(keys.meta(partition), "seq") or 0) for partition in keys.all()])
