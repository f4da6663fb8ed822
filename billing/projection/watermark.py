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
(one operation of a batch run failing after next_id) keeps the id consumed with no entry, and outbox entries
that cannot be read go to the dead-letter stream.

Any consumer may compute it at any time from the group's state, so it holds with several consumers and
after crashes; it is stored monotonically (a stale, lower computation never lowers it) in one Redis key,
and the projector computes the watermarks of all the partitions a read projected in three pipelined round
trips (advance_all): the group states, one short XRANGE each, the stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from billing.core.config import MAX_PARTITIONS
from billing.infra.redis_route import RedisClient
from billing.infra.stores import awaited
from billing.ledger.scripts import RedisKeys

SCAN = 16  # entries read per XRANGE while looking for the oldest one that carries transactions

# SET the key to ARGV[1] unless it already holds a larger id. Compared as decimal strings (no leading
# zeros): exact for any int64, where Lua's doubles are exact only below 2^53. An advance is also PUBLISHed on
# the channel named as the key: the event feed's long polls wake on it (billing/views/events.py).
_ADVANCE = """
local new, cur = ARGV[1], redis.call('GET', KEYS[1])
if not cur or #new > #cur or (#new == #cur and new > cur) then
  redis.call('SET', KEYS[1], new)
  redis.call('PUBLISH', KEYS[1], new)
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

    def __init__(self, redis: RedisClient, keys: RedisKeys, partition: int, group: str | None = None) -> None:
        self.redis = redis
        self.partition = partition
        self.stream = keys.outbox(partition)
        self.meta = keys.meta(partition)
        self.key = keys.projected(partition)
        self.group = group

    async def read(self) -> int | None:
        """The stored watermark; None when no projector has published one yet (then history is unbounded)."""
        value = await self.redis.get(self.key)
        return int(value) if value is not None else None

    async def compute(self) -> int | None:
        """The watermark as of now from the consumer group; None while the group does not exist."""
        return (await compute_all([self]))[0]

    async def publish(self, value: int) -> int:
        """Store value unless a larger one is stored; the stored value."""
        return int(await awaited(self.redis.eval(_ADVANCE, 1, self.key, str(value))))

    async def advance(self) -> int | None:
        """Compute and publish; the stored watermark (None while it cannot be computed)."""
        return (await advance_all(self.redis, [self]))[0]


async def compute_all(watermarks: Sequence[ProjectionWatermark]) -> list[int | None]:
    """The watermarks of several partitions as of now, in two round trips for all of them (more only while an
    outbox holds more than SCAN unacknowledged entries without transactions); None where a group is missing."""
    if not watermarks:
        return []
    redis = watermarks[0].redis
    pipe = redis.pipeline(transaction=False)
    for w in watermarks:
        if w.group is None:
            raise ValueError("computing the watermark needs the projector's consumer group")
        # seq first: every id up to it was XADDed before the group state below is read, so that state either
        # acknowledges it or shows it pending or undelivered. (No MULTI needed: the partitions may sit on
        # different Redis Cluster nodes.)
        pipe.hget(w.meta, "seq")
        pipe.xinfo_groups(w.stream)
        pipe.xpending(w.stream, w.group)
    replies = await pipe.execute(raise_on_error=False)
    starts: list[str | None] = []
    seqs: list[int] = []
    for index, w in enumerate(watermarks):
        seq, groups, pending = replies[3 * index : 3 * index + 3]
        if isinstance(seq, Exception):
            raise seq
        seqs.append(int(seq or 0))
        starts.append(_scan_start(groups, pending, w.group))
    # Everything before a start is acknowledged; entries only ever get acknowledged or appended, so what the
    # XRANGEs see now is still correct (an entry gone since was acknowledged).
    pipe = redis.pipeline(transaction=False)
    scanned = [(w, start) for w, start in zip(watermarks, starts, strict=True) if start is not None]
    for w, begin in scanned:
        pipe.xrange(w.stream, min=begin, max="+", count=SCAN)
    first_rows = iter(await pipe.execute() if scanned else [])
    results: list[int | None] = []
    for w, maybe_start, seq in zip(watermarks, starts, seqs, strict=True):
        if maybe_start is None:
            results.append(None)  # no stream or no group yet: the projector's next start makes them
            continue
        rows = next(first_rows)
        while True:
            first = next((f for _entry_id, fields in rows if (f := _first_id(fields)) is not None), None)
            if first is not None:
                results.append(first - 1)
                break
            if len(rows) < SCAN:
                # No unacknowledged transaction when the group was read: every id up to seq's is in MongoDB
                # or never was written (ids taken later are above it).
                results.append(seq * MAX_PARTITIONS + w.partition if seq else 0)
                break
            rows = await redis.xrange(w.stream, min="(" + _text(rows[-1][0]), max="+", count=SCAN)
    return results


async def advance_all(redis: RedisClient, watermarks: Sequence[ProjectionWatermark]) -> list[int | None]:
    """Compute and publish the watermarks of several partitions in three round trips; the stored values
    (None where one cannot be computed and none is stored)."""
    values = await compute_all(watermarks)
    pipe = redis.pipeline(transaction=False)
    for w, value in zip(watermarks, values, strict=True):
        if value is None:
            pipe.get(w.key)
        else:
            # EVAL (a short script): a Redis Cluster pipeline refuses EVALSHA
            pipe.eval(_ADVANCE, 1, w.key, str(value))
    return [None if stored is None else int(stored) for stored in await pipe.execute()] if watermarks else []


def _scan_start(groups: Any, pending: Any, group_name: str | None) -> str | None:
    """Where the oldest unacknowledged entry may be, from XINFO GROUPS and XPENDING; None without the group."""
    if isinstance(groups, Exception) or isinstance(pending, Exception):
        return None
    group = next((g for g in groups if _text(g["name"]) == group_name), None)
    if group is None:
        return None
    return _text(pending["min"]) if pending["pending"] else "(" + _text(group["last-delivered-id"])
