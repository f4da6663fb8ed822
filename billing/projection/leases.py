"""Partition leases: the projectors share the ledger partitions between them, each partition's outbox read in
order by exactly one projector at a time (in either BILLING_REDIS_MODE), which the hash chain needs
(billing/projection/chainer.py).

A lease is a key in its partition's slot (RedisKeys.projector_lease) holding its projector's name, set with
SET NX PX and renewed while the projector lives. The projectors alive register in one sorted set
(RedisKeys.projectors, scored by when their registration runs out), and each takes at most its share,
ceil(partitions / projectors alive): a new projector gets partitions as the others give up their surplus, and
the partitions of a projector that died are taken over once its leases run out.

Renewing is apart from projecting: a running projector renews its leases and its registration from a task of
its own (renew()), so a slow MongoDB write, however long, never lets a partition go to another projector
while its holder is alive; only a projector whose process or event loop stops answering loses its leases.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib

from billing.infra.redis_route import RedisClient
from billing.infra.stores import awaited
from billing.ledger.scripts import RedisKeys

log = logging.getLogger("billing.projection.leases")

# Renewed when a third of the lease is left: a projector may miss two renewals before losing it.
RENEW_FRACTION = 3

# Also the webhook leases' (billing/webhooks/store.py): KEYS[1] the lease; ARGV[1] its holder, ARGV[2] ms.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] the lease; ARGV[1] its holder: deleted only while that holder has it.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class PartitionLeases:
    """The partitions one projector (`owner`) holds now; refresh() renews, gives back and takes leases."""

    def __init__(self, redis: RedisClient, keys: RedisKeys, owner: str, lease_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.lease_ms = lease_ms
        self.owned: set[int] = set()
        self._renewed_at = -math.inf
        self._lost: set[int] = set()  # found lost by renew(), reported by the next refresh()
        self._lock = asyncio.Lock()  # renew(), refresh() and release_all() one at a time
        # Where this projector starts looking for free partitions: projectors starting together spread out.
        self._start = zlib.crc32(owner.encode()) % keys.partitions

    def due(self) -> bool:
        """A refresh is due: a third of a lease has passed since the last, or renew() found a lease lost."""
        return bool(self._lost) or time.monotonic() - self._renewed_at >= self.lease_ms / 1000 / RENEW_FRACTION

    async def renew(self) -> None:
        """Register as alive and renew the leases held (a running projector's heartbeat); a lease found lost
        leaves `owned` at once and is reported by the next refresh()."""
        async with self._lock:
            await self._register()
            await self._renew_owned()

    async def _renew_owned(self) -> None:
        for partition in sorted(self.owned):
            renewed = await awaited(
                self.redis.eval(RENEW_LEASE, 1, self.keys.projector_lease(partition), self.owner, str(self.lease_ms))
            )
            if not renewed:
                log.warning("lost the lease of partition %d (renewed too late): another projector has it", partition)
                self.owned.discard(partition)
                self._lost.add(partition)

    async def refresh(self) -> tuple[set[int], set[int]]:
        """Register as alive, renew the leases held, give back those over this projector's share and take free
        ones up to it: (the partitions taken, the partitions lost or given back)."""
        async with self._lock:
            return await self._refresh()

    async def _refresh(self) -> tuple[set[int], set[int]]:
        self._renewed_at = time.monotonic()
        share = await self._share()
        await self._renew_owned()
        lost, self._lost = self._lost, set()
        surplus = sorted(self.owned)[share:]
        for partition in surplus:
            await self._release(partition)
        lost.update(surplus)
        taken: set[int] = set()
        if len(self.owned) < share:
            for partition in self._candidates():
                if await self.redis.set(self.keys.projector_lease(partition), self.owner, nx=True, px=self.lease_ms):
                    taken.add(partition)
                    self.owned.add(partition)
                    if len(self.owned) >= share:
                        break
        if taken or surplus:
            log.info("projecting partitions %s (took %s, gave back %s)", sorted(self.owned), sorted(taken), surplus)
        return taken, lost

    async def release_all(self) -> None:
        """Give every lease back (a stopping projector), so that others take them over at once."""
        async with self._lock:
            owned, self.owned = sorted(self.owned), set()
            self._lost.clear()
            self._renewed_at = -math.inf  # holding nothing: the next refresh is due at once
            for partition in owned:
                await self._release(partition)
            await awaited(self.redis.zrem(self.keys.projectors, self.owner))

    async def _register(self) -> int:
        """Registered as alive until a lease from now; the time now in ms."""
        now_ms = int(time.time() * 1000)
        await awaited(self.redis.zadd(self.keys.projectors, {self.owner: now_ms + self.lease_ms}))
        return now_ms

    async def _share(self) -> int:
        """ceil(partitions / projectors alive), this one included."""
        now_ms = await self._register()
        await awaited(self.redis.zremrangebyscore(self.keys.projectors, "-inf", now_ms))
        alive = max(1, int(await awaited(self.redis.zcard(self.keys.projectors))))
        return math.ceil(self.keys.partitions / alive)

    def _candidates(self) -> list[int]:
        """The partitions not held by this projector, from its own starting point on."""
        count = self.keys.partitions
        order = [(self._start + step) % count for step in range(count)]
        return [partition for partition in order if partition not in self.owned]

    async def _release(self, partition: int) -> None:
        self.owned.discard(partition)
        await awaited(self.redis.eval(RELEASE_LEASE, 1, self.keys.projector_lease(partition), self.owner))
