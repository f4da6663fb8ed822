"""The outbox projector: the Redis outbox streams (one per ledger partition) -> MongoDB ledger, through one
consumer group per stream, acked after the write; each transaction stored with its hash-chain link."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from billing.core.config import Settings, default
from billing.infra.redis_route import RedisClient
from billing.infra.tasks import cancel_and_wait, start_loop, wait_event
from billing.ledger.scripts import RedisKeys, transaction_partition
from billing.projection.chainer import Chainer
from billing.projection.leases import RENEW_FRACTION, PartitionLeases
from billing.projection.store import LedgerStore, ServiceName, transaction_document
from billing.projection.watermark import ProjectionWatermark, advance_all

log = logging.getLogger("billing.projection.projector")

GROUP = "ledger-projector"
SEQ_SPAN = 1_000_000  # stream ids ms-seq map to the integer ms * SEQ_SPAN + seq (seq stays far below it)
TRIM_EVERY_SECONDS = 1.0
# How often the projector raises the partitions' largest projected ids in MongoDB (the sequence check's
# high-water marks, billing/projection/seq_guard.py): a batch's ids are gathered and written with the next due
# batch, or by the loop's tick, or at the end of a drain or a stop, so a busy projector makes one such write a
# second instead of one a batch. They only lag: a check meanwhile sees a lower mark, never a higher one.
TOPS_EVERY_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 60.0
PRUNE_IDLE_MS = 3_600_000  # a consumer silent this long with nothing pending is gone (a crashed process)
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
# A projector whose loop has neither come round nor begun a batch for this long (an await that never returns)
# stops renewing its leases, so that another projector takes its partitions; a slow write that returns keeps them.
STALL_SECONDS = 60.0

Entry = tuple[str, dict[str, str]]
Read = list[tuple[str, list[Entry]]]  # (stream, its entries) for each stream that had some


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def stream_seq(entry_id: str) -> int:
    """A stream id as one integer that keeps the stream's order (the `seq` of a services document)."""
    ms, seq = parse_id(entry_id)
    return ms * SEQ_SPAN + seq


def next_id(entry_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


@dataclass
class Batch:
    """Stream entries turned into what MongoDB gets."""

    ids: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # the stream of each entry of ids
    docs: list[dict[str, Any]] = field(default_factory=list)
    services: dict[int, ServiceName] = field(default_factory=dict)
    poison: list[tuple[str, str, dict[str, str], str]] = field(default_factory=list)  # stream, id, fields, why


def to_batch(read: Read) -> Batch:
    batch = Batch()
    for stream, entry_id, fields in ((stream, i, f) for stream, entries in read for i, f in entries):
        batch.ids.append(entry_id)
        batch.streams.append(stream)
        try:
            docs = [transaction_document(record) for record in orjson.loads(fields.get("txns", "[]"))]
            names = orjson.loads(fields.get("services", "{}"))
            changes = [ServiceName(int(sid), str(name), stream_seq(entry_id)) for sid, name in names.items()]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            batch.poison.append((stream, entry_id, fields, f"{type(exc).__name__}: {exc}"))
            continue
        batch.docs.extend(docs)
        for change in changes:
            # The latest by stream position wins: a read of several partitions' streams is not in time order.
            kept = batch.services.get(change.service_id)
            if kept is None or change.seq > kept.seq:
                batch.services[change.service_id] = change
    return batch


class Projector:
    """Projects the outboxes into MongoDB: at least once delivery, exactly once in the ledger (ids are keys).

    It reads only the partitions it holds a lease on (billing/projection/leases.py), however many projectors
    run: a partition taken over has its former projector's unacknowledged entries read first, so each
    partition is projected in order by one projector at a time, which is what lets the projector compute
    each transaction's hash-chain link as it inserts it (billing/projection/chainer.py). With one Redis the
    streams held are read by one XREADGROUP (a batch may mix partitions; each entry is acknowledged in its
    own stream and advances its own partition's watermark); in a Redis Cluster by one per stream (streams of
    different slots cannot be read by one), polled every block_ms. claim_idle_ms is the lease's length.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: RedisKeys,
        store: LedgerStore,
        *,
        batch: int = default("projector_batch"),
        block_ms: int = default("projector_block_ms"),
        claim_idle_ms: int = default("projector_claim_idle_ms"),
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.streams = [keys.outbox(p) for p in keys.all()]
        self.watermarks = {keys.outbox(p): ProjectionWatermark(redis, keys, p, GROUP) for p in keys.all()}
        self.store = store
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leases = PartitionLeases(redis, keys, self.consumer, claim_idle_ms)
        self.chainer = Chainer(store)
        # Partitions taken over, and where XAUTOCLAIM goes on in each: their pending entries come first.
        self._taken_over: dict[int, str] = {}
        # counters for metrics
        self.batches = 0
        self.transactions_written = 0
        self.duplicates_skipped = 0
        self.services_written = 0
        self.entries_acked = 0
        self.entries_claimed = 0
        self.entries_trimmed = 0
        self.failures = 0
        self.poisoned = 0
        self.conflicts = 0
        # Called once per batch projected (entries, seconds): the metrics hook.
        self.on_batch: Callable[[int, float], None] | None = None
        # Called with the number of conflicting transactions found in a batch (the metrics hook).
        self.on_conflict: Callable[[int], None] | None = None
        # Fault injection for tests: awaited after MongoDB confirmed a batch, before its XACK.
        self.before_ack: Callable[[list[str]], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._came_round_at = time.monotonic()  # the loop's last round or batch begun (the heartbeat's stall check)
        self._group_ready = False
        self._indexes_ready = False
        self._watermark_ready = False
        self._own_pending = False
        self._last_trim = 0.0
        self._last_prune = 0.0
        self._last_tops = 0.0
        self._tops: dict[int, int] = {}  # partition -> its largest id projected and not yet written (_raise_tops)

    @classmethod
    def from_settings(cls, settings: Settings, redis: RedisClient, keys: RedisKeys, store: LedgerStore) -> Projector:
        return cls(
            redis,
            keys,
            store,
            batch=settings.projector_batch,
            block_ms=settings.projector_block_ms,
            claim_idle_ms=settings.projector_claim_idle_ms,
        )

    @classmethod
    def from_context(cls, ctx: Any) -> Projector:
        """Another projector on a context's stores (tests use one beside the context's own)."""
        return cls.from_settings(ctx.settings, ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        await cancel_and_wait(self._heartbeat)  # (the heartbeat of a loop that has ended)
        self._came_round_at = time.monotonic()
        task = self._task = start_loop(self._run, f"outbox-projector {self.consumer}")
        self._heartbeat = start_loop(
            functools.partial(self._keep_leases, task), f"outbox-projector leases {self.consumer}"
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in hand; entries not acked stay pending for the next consumer."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                await cancel_and_wait(task)
        heartbeat, self._heartbeat = self._heartbeat, None
        await cancel_and_wait(heartbeat)
        with contextlib.suppress(Exception):
            await self._raise_tops()
        with contextlib.suppress(Exception):
            await self._forget_consumer()
        await self._give_back()

    async def refresh_leases(self) -> None:
        """Renew, give back and take partition leases; the loop calls it when due."""
        taken, lost = await self.leases.refresh()
        for partition in lost:
            self._taken_over.pop(partition, None)
        for partition in taken:
            self._taken_over[partition] = "0-0"
        if taken or lost:
            # Another projector may have extended these partitions' chains since this one last read them.
            self.chainer.forget()

    def _read_streams(self) -> list[str]:
        """The streams this projector reads: those of the partitions it holds."""
        return [self.keys.outbox(partition) for partition in sorted(self.leases.owned)]

    async def drain(self, timeout: float = 5.0, keep_leases: bool | None = None) -> None:
        """Project everything in the streams now: those of the partitions it holds or can take, and wait for the
        other projectors alive to project theirs; TimeoutError when that does not happen within `timeout`
        seconds. Unless `keep_leases` (default: while running), it gives its leases back afterwards: a one-off
        drain holds no partition."""
        deadline = asyncio.get_running_loop().time() + timeout
        one_off = not (self.running if keep_leases is None else keep_leases)
        try:
            await self._drain(deadline, timeout)
        except Exception:
            if one_off:
                await self._give_back()
            raise
        if one_off:
            await self._give_back()

    async def _drain(self, deadline: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        last_error: Exception | None = None
        while True:
            handled = 0
            try:
                async with asyncio.timeout(max(0.05, deadline - loop.time())):
                    async with self._lock:
                        if self.leases.due():
                            await self.refresh_leases()
                        await self._prepare()
                        handled = await self._step(block=False)
                        if handled == 0 and (await self.lag())["entries"] == 0:
                            await self._trim()
                            await self._advance_all()
                            return
            except Exception as exc:  # MongoDB or Redis down, or out of time: retry until the deadline
                last_error = exc
            if loop.time() >= deadline:
                lag = await self.lag()
                raise TimeoutError(f"outbox not drained in {timeout} s: {lag}") from last_error
            if handled == 0:
                await asyncio.sleep(0.05 if last_error is None else 0.2)

    async def _give_back(self) -> None:
        with contextlib.suppress(Exception):
            await self.leases.release_all()
        self._taken_over.clear()
        self.chainer.forget()

    def _states_pipeline(self, streams: list[str]) -> Any:
        """A pipeline asking XINFO GROUPS, then XPENDING, of each stream: in one MULTI, or in a Redis Cluster
        (where streams of different slots are apart) a plain pipeline, each stream's two in that order on its
        node. Trimming stays safe either way: nothing pending at XPENDING means everything delivered up to the
        XINFO before it was acknowledged."""
        pipe = self.redis.pipeline(transaction=not isinstance(self.redis, RedisCluster))
        for stream in streams:
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, GROUP)
        return pipe

    async def lag(self, streams: list[str] | None = None) -> dict[str, Any]:
        """Entries not yet projected (pending + not yet delivered, over every stream, or these) and the age of the
        oldest."""
        streams = self.streams if streams is None else streams
        pipe = self._states_pipeline(streams)
        if isinstance(self.redis, RedisCluster):  # its pipelines refuse TIME (no key to route it by)
            replies = await pipe.execute(raise_on_error=False)
            now = await self.redis.time()
        else:
            pipe.time()
            *replies, now = await pipe.execute(raise_on_error=False)
        if isinstance(now, Exception):
            raise now
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        entries, oldest_ms = 0, None
        for index, stream in enumerate(streams):
            count, oldest = await self._stream_lag(stream, replies[2 * index], replies[2 * index + 1])
            entries += count
            if oldest is not None:
                ms = parse_id(oldest)[0]
                oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
        age = max(0, now_ms - oldest_ms) / 1000 if oldest_ms is not None else 0.0
        return {"entries": entries, "oldest_age_seconds": age}

    async def _stream_lag(self, stream: str, groups: Any, pending: Any) -> tuple[int, str | None]:
        """(entries not yet projected, the id of the oldest) of one stream, from its XINFO GROUPS and XPENDING."""
        if isinstance(groups, Exception):  # no stream yet
            return 0, None
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if group is None or isinstance(pending, Exception):
            entries = int(await self.redis.xlen(stream))
            return entries, await self._first_after(stream, "0-0") if entries else None
        delivered = _text(group["last-delivered-id"])
        waiting = group.get("lag")
        undelivered = int(waiting) if waiting is not None else await self._count_after(stream, delivered)
        entries = int(pending["pending"]) + undelivered
        if pending["pending"]:
            return entries, _text(pending["min"])
        return entries, await self._first_after(stream, delivered) if undelivered else None

    async def readiness(self) -> dict[str, Any]:
        """The /readyz contribution: the lag, or why it is unknown (never raises)."""
        try:
            async with asyncio.timeout(1.0):
                return {"outbox": await self.lag()}
        except Exception as exc:
            return {"outbox": {"error": type(exc).__name__}}

    def stats(self) -> dict[str, int]:
        names = (
            "batches",
            "transactions_written",
            "duplicates_skipped",
            "services_written",
            "entries_acked",
            "entries_claimed",
            "entries_trimmed",
            "failures",
            "poisoned",
            "conflicts",
        )
        return {name: getattr(self, name) for name in names}

    # ---- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            started = self._came_round_at = time.monotonic()
            try:
                async with self._lock:
                    if self.leases.due():
                        await self.refresh_leases()
                    await self._prepare()
                    handled = await self._step(block=True)
                    if self._due("_last_trim", TRIM_EVERY_SECONDS):
                        await self._trim()
                        # also after a consumer that crashed between its XACK and its publish
                        await self._advance_all()
                    if self._due("_last_prune", PRUNE_EVERY_SECONDS):
                        await self.prune_consumers()
                delay = BACKOFF_FIRST
            except Exception as exc:
                self.failures += 1
                log.warning("outbox projection failed (retrying in %.1f s, nothing acked): %r", delay, exc)
                await self._pause(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if handled == 0:
                # fakeredis answers a blocking read at once: wait out the block time here instead
                rest = self.block_ms / 1000 - (time.monotonic() - started)
                if rest > 0.01:
                    await self._pause(rest)

    async def _keep_leases(self, loop: asyncio.Task[None]) -> None:
        """The heartbeat of the loop `loop`: renews the leases held as often as the loop's refresh would, however
        long its batch in hand takes (a slow MongoDB; also while stop() waits for that batch), so that no other
        projector takes a partition this one is writing. It ends with the loop, and renews nothing while the
        loop has not come round (nor begun a batch) for STALL_SECONDS."""
        stalled = False
        while True:
            await asyncio.wait({loop}, timeout=self.leases.lease_ms / 1000 / RENEW_FRACTION)
            if loop.done():
                return
            if time.monotonic() - self._came_round_at > STALL_SECONDS:
                if not stalled:
                    log.error(
                        "outbox projector %s has not moved for %.0f s: its leases are left to run out",
                        self.consumer,
                        STALL_SECONDS,
                    )
                stalled = True
                continue
            stalled = False
            try:
                await self.leases.renew()
            except Exception as exc:  # Redis unavailable: the loop's own refresh tries too
                log.warning("projector leases not renewed now: %r", exc)

    async def _pause(self, seconds: float) -> None:
        await wait_event(self._stopping, seconds)

    def _due(self, attr: str, every: float) -> bool:
        now = time.monotonic()
        if now - getattr(self, attr) >= every:
            setattr(self, attr, now)
            return True
        return False

    async def _advance_all(self) -> None:
        await self._raise_tops()
        await self._advance(self._read_streams())

    async def _raise_tops(self) -> None:
        """Write the largest ids projected since the last such write (kept for the next one if this one fails)."""
        tops, self._tops = self._tops, {}
        try:
            await self.store.raise_partition_tops(tops)
        except BaseException:
            self._keep_tops(tops)
            raise

    def _keep_tops(self, tops: dict[int, int]) -> None:
        """Hold partitions' largest ids for the next _raise_tops (each the larger of the two)."""
        for partition, top in tops.items():
            self._tops[partition] = max(self._tops.get(partition, 0), top)

    async def _prepare(self) -> None:
        if not self._group_ready:
            for stream in self.streams:
                try:
                    await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            self._group_ready = True
        if not self._indexes_ready:
            await self.store.ensure_indexes()
            self._indexes_ready = True
        if not self._watermark_ready:
            # Before the first batch: once the keys exist, history is bounded by them from the first insert on.
            await self._advance_all()
            self._watermark_ready = True

    async def _step(self, block: bool) -> int:
        """Project one batch: this consumer's unacked entries, else those of the partitions it took over, else
        new ones."""
        read: Read = []
        if self._own_pending:
            read = await self._read("0", None)
            self._own_pending = bool(read)
        if not read and self._taken_over:
            read = await self._take_over()
        if not read:
            read = await self._read(">", self.block_ms if block else None)
        # One read takes up to `batch` entries of each stream: MongoDB gets them `batch` at a time, so a batch
        # holds the event loop no longer than with one stream. The watermarks of the partitions projected advance
        # once, after the read's last batch or the one that failed (three round trips for them all, not for each
        # batch): each is computed from what was acknowledged, so a partition whose batch failed stays put.
        handled = 0
        projected: dict[str, None] = {}
        try:
            for part in _slices(read, self.batch):
                await self._project(part)
                projected.update(dict.fromkeys(stream for stream, _entries in part))
                handled += sum(len(entries) for _stream, entries in part)
        except Exception:  # (not on cancellation: a projector being stopped makes no more calls)
            await self._advance(projected)
            raise
        await self._advance(projected)
        return handled

    async def _advance(self, streams: Iterable[str]) -> None:
        watermarks = [self.watermarks[stream] for stream in streams]
        if watermarks:
            await advance_all(self.redis, watermarks)

    async def _read(self, start: str, block_ms: int | None) -> Read:
        streams = self._read_streams()
        if start == ">" and self._taken_over:  # a partition taken over: its former projector's entries first
            streams = [s for s in streams if self.watermarks[s].partition not in self._taken_over]
        if not streams:
            return []
        try:
            if isinstance(self.redis, RedisCluster):  # one XREADGROUP per stream, each to its node, none blocking
                pipe = self.redis.pipeline()
                for stream in streams:
                    pipe.xreadgroup(GROUP, self.consumer, {stream: start}, count=self.batch)
                reply = [item for answer in await pipe.execute() for item in answer or []]
            else:
                reply = await self.redis.xreadgroup(
                    GROUP, self.consumer, dict.fromkeys(streams, start), count=self.batch, block=block_ms
                )
        except BaseException as exc:
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):  # a stream was deleted (Redis wiped)
                self._group_ready = False  # make the groups again
            # A read whose reply was lost (or, on a cluster, one node's of several) may have delivered entries
            # to this consumer: read them again before anything new. Without leases XAUTOCLAIM would take them
            # once idle; with leases nothing else would.
            self._own_pending = True
            raise
        return [(_text(name), entries) for name, raw in reply or [] if (entries := _entries(raw))]

    async def _take_over(self) -> Read:
        """The unacknowledged entries of the partitions taken over (their former projector died or gave them
        back), claimed whatever their idle time: only the lease holder reads a partition."""
        read: Read = []
        for partition, start in sorted(self._taken_over.items()):
            if partition not in self.leases.owned:  # lost again since (the heartbeat found it so)
                del self._taken_over[partition]
                continue
            stream = self.keys.outbox(partition)
            reply = await self.redis.xautoclaim(
                stream, GROUP, self.consumer, min_idle_time=0, start_id=start, count=self.batch
            )
            entries = _entries(reply[1])
            if _text(reply[0]) == "0-0":
                del self._taken_over[partition]  # every pending entry is this projector's now
            else:
                self._taken_over[partition] = _text(reply[0])
            if entries:
                read.append((stream, entries))
                self.entries_claimed += len(entries)
                log.info("took over %d unacknowledged entries of %s", len(entries), stream)
        return read

    async def _project(self, read: Read) -> None:
        started = time.perf_counter()
        self._came_round_at = time.monotonic()  # a round of many batches into a slow MongoDB is not a stall
        batch = to_batch(read)
        try:
            heads = await self.chainer.link(batch.docs)
            inserted, duplicates = await self.store.insert_transactions(batch.docs)
            # A duplicate is a replay of the same transaction (a lost XACK, a claim), unless its content
            # differs: then one id was given to two transactions (Redis lost its sequence), never skip that.
            conflicts = await self.store.conflicting(batch.docs) if duplicates else []
            services = await self.store.upsert_service_names(batch.services.values())
            self._keep_tops(_tops(batch.docs))
            if self._due("_last_tops", TOPS_EVERY_SECONDS):
                await self._raise_tops()
            if self.before_ack is not None:
                await self.before_ack(batch.ids)
            for stream, entry_id, fields, error in batch.poison:
                dead = self.keys.outbox_dead(self._partition(stream))
                log.error("outbox entry %s of %s unreadable (%s): moved to %s", entry_id, stream, error, dead)
                entry: dict[Any, Any] = {**fields, "id": entry_id, "error": error}
                await self.redis.xadd(dead, entry)
            for new, stored in conflicts:
                kept = self.keys.outbox_conflicts(transaction_partition(int(new["_id"])))
                log.error(
                    "transaction id %d is in MongoDB with other content: the new one is kept in %s, not in the "
                    "ledger (Redis reused ids; see `billing rebuild`). new=%s stored=%s",
                    int(new["_id"]),
                    kept,
                    _json(new),
                    _json(stored),
                )
                await self.redis.xadd(kept, {"id": str(int(new["_id"])), "txn": _json(new), "stored": _json(stored)})
            pipe = self.redis.pipeline(transaction=False)
            for stream, entries in read:
                pipe.xack(stream, GROUP, *[entry_id for entry_id, _fields in entries])
            await pipe.execute()
        except BaseException:
            self._own_pending = True  # read them again before anything new
            raise
        self.chainer.advance(heads)
        if conflicts:
            self.conflicts += len(conflicts)
            if self.on_conflict is not None:
                self.on_conflict(len(conflicts))
        self.batches += 1
        self.transactions_written += inserted
        self.duplicates_skipped += duplicates
        self.services_written += services
        self.entries_acked += len(batch.ids)
        self.poisoned += len(batch.poison)
        if self.on_batch is not None:
            self.on_batch(len(batch.ids), time.perf_counter() - started)

    def _partition(self, stream: str) -> int:
        return self.watermarks[stream].partition

    async def _trim(self) -> None:
        """Delete acknowledged entries of the streams read: everything below the oldest pending entry or the last
        delivered one."""
        streams = self._read_streams()
        if not streams:
            return
        replies = await self._states_pipeline(streams).execute()
        trims = self.redis.pipeline(transaction=False)
        for index, stream in enumerate(streams):
            groups, pending = replies[2 * index], replies[2 * index + 1]
            group = next((g for g in groups if _text(g["name"]) == GROUP), None)
            if group is None:
                continue
            if pending["pending"]:
                boundary = _text(pending["min"])
            else:
                delivered = _text(group["last-delivered-id"])
                if delivered == "0-0":
                    continue
                boundary = next_id(delivered)
            trims.xtrim(stream, minid=boundary, approximate=False)
        self.entries_trimmed += sum(int(n) for n in await trims.execute())

    async def _first_after(self, stream: str, entry_id: str) -> str | None:
        rows = await self.redis.xrange(stream, min=next_id(entry_id), max="+", count=1)
        return _text(rows[0][0]) if rows else None

    async def _count_after(self, stream: str, entry_id: str) -> int:
        count, start = 0, next_id(entry_id)
        while True:
            rows = await self.redis.xrange(stream, min=start, max="+", count=1000)
            count += len(rows)
            if len(rows) < 1000:
                return count
            start = next_id(_text(rows[-1][0]))

    async def prune_consumers(self, idle_ms: int = PRUNE_IDLE_MS) -> int:
        """Remove consumers of crashed processes: nothing pending (claimed away) and silent for idle_ms. Returns
        how many were removed from a stream's group (a consumer is in the group of every stream)."""
        removed = 0
        for stream in self.streams:
            for consumer in await self.redis.xinfo_consumers(stream, GROUP):
                name = _text(consumer["name"])
                if name != self.consumer and not consumer["pending"] and int(consumer["idle"]) >= idle_ms:
                    await self.redis.xgroup_delconsumer(stream, GROUP, name)  # answers its pending count: 0
                    removed += 1
        return removed

    async def _forget_consumer(self) -> None:
        """Leave the groups where nothing is pending for this consumer (else a later one claims it)."""
        for stream in self.streams:
            mine = await self.redis.xpending_range(stream, GROUP, min="-", max="+", count=1, consumername=self.consumer)
            if not mine:
                await self.redis.xgroup_delconsumer(stream, GROUP, self.consumer)


def _slices(read: Read, size: int) -> list[Read]:
    """The entries of a read in slices of at most `size`, each stream's in order."""
    out: list[Read] = []
    current: Read = []
    room = size
    for stream, entries in read:
        start = 0
        while start < len(entries):
            taken = entries[start : start + room]
            current.append((stream, taken))
            start += len(taken)
            room -= len(taken)
            if room == 0:
                out.append(current)
                current, room = [], size
    if current:
        out.append(current)
    return out


def _tops(docs: list[dict[str, Any]]) -> dict[int, int]:
    """The largest transaction id of each partition among documents."""
    tops: dict[int, int] = {}
    for doc in docs:
        txn_id = int(doc["_id"])
        partition = transaction_partition(txn_id)
        tops[partition] = max(tops.get(partition, 0), txn_id)
    return tops


def _json(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc, default=str).decode()


def _entries(raw: list[Any]) -> list[Entry]:
    entries = []
    for entry_id, fields in raw:
        if fields is None:  # deleted while pending (Redis < 7 reports these)
            continue
        entries.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
    return entries
