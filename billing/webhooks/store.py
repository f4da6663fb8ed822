"""Webhook definitions and delivery state in Redis (the keys are RedisKeys.webhooks/webhook/webhook_lease).

A webhook is one hash: its definition (url, types, secret, created_at) and its delivery state: `position`, the
feed position delivered through (per ledger partition, the sequence number a feed cursor carries), and while
a batch is in flight `batch_id` (its Billing-Delivery-Id), `batch_events` (its transaction ids, in delivery
order) and `batch_to` (the position after it), plus `attempts`, `next_attempt_at`, `last_error`,
`last_attempt_at` and `last_success_at` (epoch ms). A dispatcher changes the state only while it holds the
webhook's lease (the commit script checks the lease's token), so a dispatcher that lost its lease, or whose
webhook was deleted meanwhile, changes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from billing.infra.redis_route import RedisClient
from billing.infra.stores import awaited
from billing.ledger.scripts import RedisKeys
from billing.projection.leases import RELEASE_LEASE, RENEW_LEASE

SECRET_BYTES = 32  # secrets.token_urlsafe: 43 characters

# Create or update a webhook. An update changes url and types only: the secret, created_at and the delivery
# state stay. A create starts the state afresh (a webhook deleted and made again starts at the new position).
#   KEYS[1] the set of names;  KEYS[2] the webhook's hash
#   ARGV[1] name;  ARGV[2] url;  ARGV[3] types (JSON list, '' for every type);  ARGV[4] a new secret;
#   ARGV[5] now (epoch ms);  ARGV[6] the feed position now (comma-separated sequence numbers)
#   Returns {1 created | 0 updated, secret, created_at}
_PUT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], 'url', ARGV[2], 'types', ARGV[3])
  return {0, redis.call('HGET', KEYS[2], 'secret'), redis.call('HGET', KEYS[2], 'created_at')}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'url', ARGV[2], 'types', ARGV[3], 'secret', ARGV[4], 'created_at', ARGV[5],
  'position', ARGV[6], 'attempts', 0)
redis.call('SADD', KEYS[1], ARGV[1])
return {1, ARGV[4], ARGV[5]}
"""

# Delete a webhook: its name, hash and lease (a dispatcher delivering it loses the lease, so commits nothing).
#   KEYS[1] the set of names;  KEYS[2] the webhook's hash;  KEYS[3] its lease;  ARGV[1] name
#   Returns 1 deleted, 0 no such webhook
_DELETE = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# A dispatcher's change of a webhook's delivery state, made only while it holds the lease.
#   KEYS[1] the webhook's hash;  KEYS[2] its lease
#   ARGV[1] the lease token;  ARGV[2] n, the number of fields to set;  ARGV[3 .. 2+2n] field, value pairs;
#   ARGV[3+2n ..] fields to delete
#   Returns 1 written, 0 not (the lease is another's or gone, or the webhook was deleted)
_COMMIT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * n))
end
if #ARGV > 2 + 2 * n then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 3 + 2 * n, #ARGV))
end
return 1
"""


def encode_position(seqs: list[int]) -> str:
    return ",".join(map(str, seqs))


def decode_position(text: str) -> list[int]:
    return [int(part) for part in text.split(",")] if text else []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class WebhookState:
    """One webhook as stored: its definition and delivery state."""

    name: str
    url: str
    types: tuple[str, ...] | None  # None: every event
    secret: str
    created_at: int
    position: list[int]
    batch_id: str | None
    batch_events: list[int]
    batch_to: list[int]
    attempts: int
    next_attempt_at: int | None
    last_error: str | None
    last_attempt_at: int | None
    last_success_at: int | None

    @classmethod
    def from_hash(cls, name: str, raw: Mapping[Any, Any]) -> WebhookState:
        h = {_text(k): _text(v) for k, v in raw.items()}

        def ms(field: str) -> int | None:
            return int(h[field]) if h.get(field) else None

        types = h.get("types", "")
        return cls(
            name=name,
            url=h["url"],
            types=tuple(orjson.loads(types)) if types else None,
            secret=h["secret"],
            created_at=int(h["created_at"]),
            position=decode_position(h.get("position", "")),
            batch_id=h.get("batch_id") or None,
            batch_events=[int(i) for i in h["batch_events"].split(",")] if h.get("batch_events") else [],
            batch_to=decode_position(h.get("batch_to", "")),
            attempts=int(h.get("attempts") or 0),
            next_attempt_at=ms("next_attempt_at"),
            last_error=h.get("last_error") or None,
            last_attempt_at=ms("last_attempt_at"),
            last_success_at=ms("last_success_at"),
        )


class WebhookStore:
    """The Redis side of webhooks: definitions, state, leases."""

    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    async def put(
        self, name: str, url: str, types: list[str] | None, now_ms: int, position: list[int]
    ) -> tuple[bool, str, int]:
        """Create or update; (created, secret, created_at)."""
        reply: list[Any] = await awaited(
            self.redis.eval(  # type: ignore[arg-type]  # (redis-py types EVAL's reply as str)
                _PUT,
                2,
                self.keys.webhooks(),
                self.keys.webhook(name),
                name,
                url,
                orjson.dumps(types).decode() if types is not None else "",
                secrets.token_urlsafe(SECRET_BYTES),
                str(now_ms),
                encode_position(position),
            )
        )
        created, secret, created_at = reply
        return bool(int(created)), _text(secret), int(created_at)

    async def delete(self, name: str) -> bool:
        keys = (self.keys.webhooks(), self.keys.webhook(name), self.keys.webhook_lease(name))
        return bool(await awaited(self.redis.eval(_DELETE, 3, *keys, name)))

    async def names(self) -> list[str]:
        return sorted(_text(n) for n in await awaited(self.redis.smembers(self.keys.webhooks())))

    async def get(self, name: str) -> WebhookState | None:
        raw = await awaited(self.redis.hgetall(self.keys.webhook(name)))
        return WebhookState.from_hash(name, raw) if raw else None

    async def all(self) -> list[WebhookState]:
        names = await self.names()
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.webhook(name))
        rows = await pipe.execute()
        return [WebhookState.from_hash(name, raw) for name, raw in zip(names, rows, strict=True) if raw]

    # ---- a dispatcher's side --------------------------------------------------------------------------------

    async def take_lease(self, name: str, token: str, lease_ms: int) -> bool:
        return bool(await self.redis.set(self.keys.webhook_lease(name), token, nx=True, px=lease_ms))

    async def renew_lease(self, name: str, token: str, lease_ms: int) -> bool:
        return bool(await awaited(self.redis.eval(RENEW_LEASE, 1, self.keys.webhook_lease(name), token, str(lease_ms))))

    async def release_lease(self, name: str, token: str) -> None:
        await awaited(self.redis.eval(RELEASE_LEASE, 1, self.keys.webhook_lease(name), token))

    async def commit(
        self, name: str, token: str, fields: Mapping[str, str | int], cleared: tuple[str, ...] = ()
    ) -> bool:
        """Set and delete state fields while holding the lease; False when the lease is not held."""
        pairs = [str(part) for item in fields.items() for part in item]
        written = await awaited(
            self.redis.eval(
                _COMMIT,
                2,
                self.keys.webhook(name),
                self.keys.webhook_lease(name),
                token,
                str(len(fields)),
                *pairs,
                *cleared,
            )
        )
        return bool(written)
