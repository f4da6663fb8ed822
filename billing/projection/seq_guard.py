"""Refuse money writes while a Redis ledger partition's sequence is behind its largest transaction id in MongoDB.

A Redis restored from an old snapshot (or emptied) would hand out ids MongoDB already holds; the
projector could then only dead-letter the new transactions (billing/projection/projector.py). So each worker checks
at start and then every CHECK_EVERY_SECONDS, partition by partition (ids of partition p are seq * 1024 + p):
while a partition's last id (from its `meta` seq) is below the largest id of that partition in MongoDB (the
projector's per-partition high-water documents, billing/projection/store.py), money operations
answer 503 `unavailable` and /readyz 503, and the operator is told to run `billing rebuild`; once the
sequence is restored (rebuild does that) writes resume without a restart.

Per worker rather than once before forking: the supervisor holds no connections (forking live clients
is unsafe), a worker it restarts checks again, and Redis can lose its data while the workers run, which
only a check repeated in the serving process notices. Every second a worker reads Redis's seqs alone (one
pipelined HGET per partition); it asks MongoDB too at start, every MONGO_EVERY_SECONDS, and at once when a
seq went backwards or is below the largest id MongoDB last reported (a Redis that lost data). MongoDB is
asked rarely because its largest ids only grow with what Redis already counted.

The same check first confirms, once, that Redis holds a ledger of this process's BILLING_PARTITIONS (a Redis
that was down at start is asked on every tick; money writes wait for it, and another count refuses them).

MongoDB unreachable: the verdict stays what it was (at start: writes allowed, with a warning), because
MongoDB down must not stop payments (history lags instead); ids reused meanwhile are caught by the
projector, which never skips a duplicate id with other content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from billing.core.config import MAX_PARTITIONS
from billing.core.errors import ApiError
from billing.infra.redis_route import RedisClient
from billing.infra.tasks import cancel_and_wait, start_loop
from billing.ledger.scripts import PartitionCountChanged, RedisKeys
from billing.projection.store import LedgerStore

log = logging.getLogger("billing.ledger.scripts")

CHECK_EVERY_SECONDS = 1.0
MONGO_EVERY_SECONDS = 30.0
CHECK_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = "5"
UNCONFIRMED = "the Redis ledger's partition count is not confirmed yet (Redis unreachable since the start)"


class SequenceGuard:
    """The verdict of the last check: `refusal` is None (writes allowed) or why writes are refused."""

    def __init__(
        self,
        redis: RedisClient,
        keys: RedisKeys,
        store: LedgerStore,
        partition_count: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        # Confirms Redis holds a ledger of this partition count (Ledger.claim_partition_count); until it did,
        # money writes are refused (a Redis down at start is asked again on every tick).
        self.partition_count = partition_count
        self._count_confirmed = partition_count is None
        self.refusal: str | None = None
        self.checked = False  # a check has completed at least once
        self._largest: dict[int, int] = {}  # MongoDB's largest transaction id per partition at the last full check
        self._last: list[int] = [0] * keys.partitions  # Redis's last id per partition at the last look
        self._mongo_checked_at = -MONGO_EVERY_SECONDS
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> str | None:
        """Compare the sequences now; the refusal (None: writes allowed). Raises when a store does not answer."""
        # MongoDB first: its ids all came from Redis, so a seq read after it is >= it unless Redis lost data.
        # Stamped before asking: a slow or failed answer is asked again only after the interval, never
        # piled up.
        if not self._count_confirmed and self.partition_count is not None:
            try:
                await self.partition_count()
                self._count_confirmed = True
            except PartitionCountChanged as exc:
                if self.refusal != str(exc):
                    log.error("REFUSING MONEY WRITES: %s", exc)
                self.refusal, self.checked = str(exc), True
                return self.refusal
        self._mongo_checked_at = time.monotonic()
        largest = await self.store.largest_ids()
        last = await self._read_last()
        self._largest = largest
        was = self.refusal
        behind = [(p, last[p], top) for p, top in sorted(largest.items()) if p < len(last) and last[p] < top]
        if behind:
            p, mine, top = behind[0]
            self.refusal = (
                f"Redis ledger partition {p} issued ids up to {mine}, behind transaction id {top} in MongoDB "
                f"({len(behind)} partition(s) behind: Redis lost data); money operations are refused until an "
                "operator runs `billing rebuild`"
            )
            if was is None:
                log.error(
                    "REFUSING MONEY WRITES: Redis %s issued ids up to %d but MongoDB holds transaction id %d "
                    "(%d partition(s) behind): Redis was restored from an old snapshot or emptied, and new "
                    "transactions would reuse ids. Runbook: stop traffic, run `billing rebuild` (with --force "
                    "when Redis still holds accounts); writes resume by themselves once every partition's "
                    "sequence is restored",
                    self.keys.meta(p),
                    mine,
                    top,
                    len(behind),
                )
        else:
            self.refusal = None
            if was is not None:
                log.warning("ledger sequences restored (no partition behind MongoDB): money writes resume")
        self.checked = True
        return self.refusal

    async def _read_last(self) -> list[int]:
        """The last id each partition issued (0 for none), from its seq: one pipelined HGET per partition."""
        pipe = self.redis.pipeline(transaction=False)
        for p in self.keys.all():
            pipe.hget(self.keys.meta(p), "seq")
        seqs = await pipe.execute()
        self._last = [int(seq) * MAX_PARTITIONS + p if seq else 0 for p, seq in enumerate(seqs)]
        return self._last

    async def tick(self) -> str | None:
        """What the background loop runs: Redis's seq alone, and the full check when it is due or suspect."""
        if not self._count_confirmed:
            return await self.check()
        before = self._last
        last = await self._read_last()
        due = time.monotonic() - self._mongo_checked_at >= MONGO_EVERY_SECONDS
        behind = any(p < len(last) and last[p] < top for p, top in self._largest.items())
        # Refused: restored (by a rebuild)? confirm with MongoDB, then resume. Else: went back (lost data)?
        restored = self.refusal is not None and not behind
        went_back = self.refusal is None and (any(now < was for now, was in zip(last, before, strict=True)) or behind)
        if due or restored or went_back:
            return await self.check()
        return self.refusal

    async def start(self) -> None:
        """Check once (bounded in time), then keep checking in the background."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await self.check()
        except Exception as exc:  # a store down at start: see the module's note
            log.warning("could not compare the Redis ledger sequence with MongoDB at start (%r); checking again", exc)
        self._task = start_loop(self._run, "ledger sequence guard")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_SECONDS)
            with contextlib.suppress(Exception):  # the verdict stays; the next round tries again
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    await self.tick()

    def ensure_writable(self) -> None:
        """Raise 503 unavailable while writes are refused (called before every money operation)."""
        if self.refusal is not None:
            raise ApiError("unavailable", self.refusal, headers={"Retry-After": RETRY_AFTER_SECONDS})
        if not self._count_confirmed:
            raise ApiError("unavailable", UNCONFIRMED, headers={"Retry-After": RETRY_AFTER_SECONDS})

    async def readiness(self) -> dict[str, Any]:
        if self.refusal is not None:
            verdict = "partition count" if not self._count_confirmed else "behind MongoDB: run `billing rebuild`"
        else:
            verdict = "ok" if self._count_confirmed else "partition count not confirmed yet"
        return {"ledger_sequence": verdict}
