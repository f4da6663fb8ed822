"""The history's watermark: the highest transaction id such that every id up to it is in MongoDB or never will be.

Why: several projector consumers (and XAUTOCLAIM redelivery) insert batches out of order, so an older
transaction can land in MongoDB after a newer one. A keyset page served in between would put its cursor
beyond the older one, and following next_cursor would never show it. History therefore reads only ids
<= the watermark (billing/views/history.py), and the watermark only passes an id once nothing below it can
still appear.

One watermark per ledger partition: a user's transactions all carry ids of the user's partition, so their
history reads up to that partition's watermark. Below, seq, ids and the outbox are the partition's.

How it is derived: ids come from one counter (`meta` seq) and every script that takes ids XADDs their
transactions in the same atomic run, so outbox entries carry increasing ids in stream order. The outbox
consumer group knows which entries are acknowledged (each one after MongoDB confirmed it, or after it was
dead-lettered). So, read atomically with seq: the oldest entry not yet acknowledged (the oldest pending
one, else the first not yet delivered); the watermark is the first transaction id in the oldest such entry
that carries transactions, minus 1; with no such entry it is the id of seq itself. Nothing here counts ids, so gaps
in the sequence never stall it, and the sequence does have gaps: a script that errors after taking an id
(e.g. Redis refusing the XADD under maxmemory, or one operation of a batch run failing after next_id)
keeps the id consumed with no entry, and outbox entries that cannot be read go to the dead-letter stream.

Any consumer may compute it at any time from the group's state, so it holds with several consumers and
after crashes; it is stored monotonically (a stale, lower computation never lowers it) in one Redis key,
and costs one MULTI, one short XRANGE and one script call per projected batch of the partition.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from billing.core.config import MAX_PARTITIONS
from billing.ledger.scripts import RedisKeys

SCAN = 16  # entries read per XRANGE while looking for the oldest one that carries transactions

# SET the key to ARGV[1] unless it already holds a larger id. Compared as decimal strings (no leading
# zeros): exact for any int64, where Lua's doubles are exact only below 2^53.
_ADVANCE = """
local new, cur = ARGV[1], redis.call('GET', KEYS[1])
if not cur or #new > #cur or (#new == #cur and new > cur) then
  redis.call('SET', KEYS[1], new)
  return new
end
return cur
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_id(fields: dict[Any, Any]) -> int | None:
    """The first transaction id of an outbox entry; None for one without transactions or unreadable."""
    raw = fields.get(b"txns", fields.get("txns"))
    if raw is None:
        return None
    try:
        records = orjson.loads(raw)
        return int(records[0]["id"]) if records else None
    except (ValueError, TypeError, KeyError, IndexError):
        return None  # a poison entry: dead-lettered, its ids never reach MongoDB


class ProjectionWatermark:
    """Computes, stores (monotonically) and reads the watermark of one ledger partition."""

    def __init__(self, redis: Redis, keys: RedisKeys, partition: int, group: str | None = None) -> None:
        self.redis = redis
        self.partition = partition
        self.stream = keys.outbox(partition)
        self.meta = keys.meta(partition)
        self.key = keys.projected(partition)
        self.group = group
        self._advance = redis.register_script(_ADVANCE)

    async def read(self) -> int | None:
        """The stored watermark; None when no projector has published one yet (then history is unbounded)."""
        value = await self.redis.get(self.key)
        return int(value) if value is not None else None

    async def compute(self) -> int | None:
        """The watermark as of now from the consumer group; None while the group does not exist."""
        if self.group is None:
            raise ValueError("computing the watermark needs the projector's consumer group")
        pipe = self.redis.pipeline(transaction=True)
        pipe.xinfo_groups(self.stream)
        pipe.xpending(self.stream, self.group)
        pipe.hget(self.meta, "seq")
        groups, pending, seq = await pipe.execute(raise_on_error=False)
        if isinstance(seq, Exception):
            raise seq
        if isinstance(groups, Exception) or isinstance(pending, Exception):
            return None  # no stream or no group yet: the projector's next start makes them
        group = next((g for g in groups if _text(g["name"]) == self.group), None)
        if group is None:
            return None
        # Everything before `start` is acknowledged; entries only ever get acknowledged or appended, so what
        # the XRANGEs below see after the MULTI is still correct (an entry gone since was acknowledged).
        start = _text(pending["min"]) if pending["pending"] else "(" + _text(group["last-delivered-id"])
        while True:
            rows = await self.redis.xrange(self.stream, min=start, max="+", count=SCAN)
            for _entry_id, fields in rows:
                first = _first_id(fields)
                if first is not None:
                    return first - 1
            if len(rows) < SCAN:
                # No unacknowledged transaction at the MULTI: every id up to seq's is in MongoDB or never
                # was written (ids taken later are above it).
                last = int(seq or 0)
                return last * MAX_PARTITIONS + self.partition if last else 0
            start = "(" + _text(rows[-1][0])

    async def publish(self, value: int) -> int:
        """Store value unless a larger one is stored; the stored value."""
        return int(await self._advance(keys=[self.key], args=[str(value)]))

    async def advance(self) -> int | None:
        """Compute and publish; the stored watermark (None while it cannot be computed)."""
        value = await self.compute()
        if value is None:
            return await self.read()
        return await self.publish(value)
