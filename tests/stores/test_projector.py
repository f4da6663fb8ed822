"""The outbox projector on mongomock and SecantusDB, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from bson.int64 import Int64
from pymongo.errors import BulkWriteError

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.infra.metrics import Metrics
from billing.ledger.outcomes import Applied
from billing.projection.projector import GROUP, Projector, stream_seq
from billing.projection.store import LedgerStore, ServiceName
from tests.support.api import Api
from tests.support.workload import deposit, run

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests drive their own projectors: the one of the context stays stopped."""
    return settings.model_copy(update={"projector_enabled": False})


def projector(ctx: Context, **kwargs: Any) -> Projector:
    options = {"batch": 500, "block_ms": 50, "claim_idle_ms": 10_000, **kwargs}
    return Projector(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), **options)


def outbox(ctx: Context, user_id: int) -> str:
    """The outbox stream of a user's partition."""
    keys = ctx.ledger.keys
    return keys.outbox(keys.partition_of(user_id))


async def all_docs(ctx: Context) -> list[dict[str, Any]]:
    return await ctx.mongo.transactions.find({}).sort("_id", 1).to_list(None)


async def test_every_record_becomes_one_typed_document(ctx: Context) -> None:
    ledger = ctx.ledger
    responses = [
        await deposit(ledger, 1, 10_050, "first"),
        await run(ledger, ledger.transfer_call(1, 2, 2_000, "rent")),
        await run(ledger, ledger.reserve_call(1, 7, 42, 3_000, "Продвижение", None)),
        await run(ledger, ledger.recognize_call(1, 7, 42, 2_500)),
        await run(ledger, ledger.reserve_call(1, 7, 43, 1_000, None, "second")),
        await run(ledger, ledger.cancel_call(1, 7, 43, None)),
        await run(ledger, ledger.withdraw_call(2, 500, None)),
    ]
    expected = []
    for outcome in responses:
        assert isinstance(outcome, Applied), outcome
        for name in ("transaction", "recipient_transaction", "release_transaction"):
            if name in outcome.body:
                expected.append(outcome.body[name])
    p = projector(ctx)
    await p.drain()
    docs = await all_docs(ctx)
    assert [d["_id"] for d in docs] == sorted(int(t["id"]) for t in expected)
    by_id = {int(d["_id"]): d for d in docs}
    for record in expected:
        doc = by_id[int(record["id"])]
        assert isinstance(doc["_id"], Int64)
        for name in ("user_id", "amount", "available_after", "reserved_after"):
            assert isinstance(doc[name], Int64) and doc[name] == int(record[name]), name
        for name in ("service_id", "order_id", "counterparty_user_id"):
            assert (name in doc) == (name in record)
            if name in record:
                assert isinstance(doc[name], Int64) and doc[name] == int(record[name])
        assert doc["type"] == record["type"]
        assert doc.get("comment") == record.get("comment")
        assert doc.get("service_name") == record.get("service_name")
        created = doc["created_at"]
        assert created.utcoffset().total_seconds() == 0
        assert created.replace(tzinfo=UTC) == datetime.fromtimestamp(int(record["created_at"]) // 1000, UTC).replace(
            microsecond=int(record["created_at"]) % 1000 * 1000
        )
    assert [by_id[int(t["id"])]["type"] for t in expected] == [
        "deposit",
        "transfer_out",
        "transfer_in",
        "reserve",
        "charge",
        "release",
        "reserve",
        "release",
        "withdrawal",
    ]
    services = await ctx.mongo.services.find({}).to_list(None)
    assert [(s["_id"], s["name"]) for s in services] == [(7, "Продвижение")]
    assert isinstance(services[0]["_id"], Int64)
    # one outbox entry per operation and partition: the transfer from user 1 to user 2 (two partitions) has two
    assert p.transactions_written == len(expected) and p.entries_acked == len(responses) + 1
    assert await p.lag() == {"entries": 0, "oldest_age_seconds": 0.0}
    for stream in p.streams:
        assert await ctx.redis.xlen(stream) == 0  # acknowledged entries are trimmed


async def test_a_replayed_entry_writes_nothing_twice(ctx: Context) -> None:
    for amount in (100, 200, 300):
        await deposit(ctx.ledger, 5, amount)
    raw = await ctx.redis.xrange(outbox(ctx, 5))
    p = projector(ctx)
    await p.drain()
    for _entry_id, fields in raw:  # the same transactions delivered again (as after a lost XACK)
        await ctx.redis.xadd(outbox(ctx, 5), fields)
    await p.drain()
    docs = await all_docs(ctx)
    assert [int(d["amount"]) for d in docs] == [100, 200, 300]
    assert p.transactions_written == 3 and p.duplicates_skipped == 3


async def test_a_later_service_name_is_never_overwritten_by_an_earlier_one(ctx: Context) -> None:
    await ctx.ledger.set_service(3, "Old name")
    await ctx.ledger.set_service(3, "New name")
    await ctx.ledger.set_service(4, "Other")
    # each partition's catalog change goes to its own outbox: MongoDB keeps the latest entry's name
    raw = await ctx.redis.xrange(ctx.ledger.keys.outbox(0))
    latest: dict[int, tuple[str, int]] = {}
    for p in ctx.ledger.keys.all():
        for entry_id, fields in await ctx.redis.xrange(ctx.ledger.keys.outbox(p)):
            for sid, name in orjson.loads(fields[b"services"]).items():
                latest[int(sid)] = max(
                    latest.get(int(sid), ("", 0)), (name, stream_seq(entry_id.decode())), key=lambda v: v[1]
                )
    await projector(ctx).drain()
    names = {int(s["_id"]): (s["name"], int(s["seq"])) for s in await ctx.mongo.services.find({}).to_list(None)}
    assert names == latest and {sid: name for sid, (name, _) in latest.items()} == {3: "New name", 4: "Other"}
    store = LedgerStore(ctx.mongo)
    # the earlier change arriving late (a claimed entry of a crashed consumer) leaves the name alone
    await store.upsert_service_names([ServiceName(3, "Old name", stream_seq(raw[0][0].decode()))])
    assert (await ctx.mongo.services.find_one({"_id": 3}))["name"] == "New name"


async def test_lag_counts_undelivered_and_pending_entries(ctx: Context) -> None:
    p = projector(ctx, batch=2)
    assert await p.lag() == {"entries": 0, "oldest_age_seconds": 0.0}
    for amount in range(1, 6):
        await deposit(ctx.ledger, 9, amount)
    await asyncio.sleep(0.05)
    lag = await p.lag()
    assert lag["entries"] == 5 and lag["oldest_age_seconds"] >= 0.04

    async def crash(ids: list[str]) -> None:
        raise RuntimeError("injected: dies before XACK")

    p.before_ack = crash
    with pytest.raises(TimeoutError):
        await p.drain(timeout=0.3)
    lag = await p.lag()
    assert lag["entries"] == 5  # two pending (written, not acked) + three never delivered
    pending = await ctx.redis.xpending(outbox(ctx, 9), GROUP)
    assert pending["pending"] == 2
    p.before_ack = None
    await p.drain()
    assert (await p.lag())["entries"] == 0
    assert [int(d["amount"]) for d in await all_docs(ctx)] == [1, 2, 3, 4, 5]


class Crash(BaseException):
    """Stands for the process dying: nothing catches it."""


async def crash_after_write(ctx: Context, batch: int) -> Projector:
    """A projector that dies after its first MongoDB write, before the XACK."""
    doomed = projector(ctx, batch=batch)

    async def die(ids: list[str]) -> None:
        raise Crash()

    doomed.before_ack = die
    with pytest.raises(Crash):
        await doomed.drain()
    return doomed


async def test_crash_between_write_and_ack_projects_every_transaction_once(ctx: Context) -> None:
    amounts = list(range(100, 130))
    for amount in amounts:
        await deposit(ctx.ledger, 1, amount)  # one partition: a read takes `batch` entries of each stream
    first = await crash_after_write(ctx, batch=7)
    # MongoDB has the batch, Redis still holds it as pending for the dead consumer
    assert len(await all_docs(ctx)) == 7
    pending = await ctx.redis.xpending(outbox(ctx, 1), GROUP)
    assert pending["pending"] == 7 and [c["name"].decode() for c in pending["consumers"]] == [first.consumer]

    second = projector(ctx, batch=7)
    with pytest.raises(TimeoutError):  # the dead projector's leases have not run out: nobody may project
        await second.drain(timeout=0.3)
    assert len(await all_docs(ctx)) == 7
    await first.leases.release_all()  # its leases run out (what expiry does, at once)
    # the dead projector's entries first (every one, however briefly idle), then the new ones
    await second.drain()
    assert second.entries_claimed == 7 and second.duplicates_skipped == 7
    docs = await all_docs(ctx)
    assert sorted(int(d["amount"]) for d in docs) == amounts
    assert len({int(d["_id"]) for d in docs}) == len(amounts)
    assert (await ctx.redis.xpending(outbox(ctx, 1), GROUP))["pending"] == 0
    assert await second.lag() == {"entries": 0, "oldest_age_seconds": 0.0}
    # the dead consumer, with nothing pending any more, is pruned from the group once silent long enough
    await asyncio.sleep(0.05)
    assert await second.prune_consumers(idle_ms=60_000) == 0
    assert await second.prune_consumers(idle_ms=10) >= 1  # from each group it read (fakeredis: every group)
    names = [c["name"].decode() for c in await ctx.redis.xinfo_consumers(outbox(ctx, 1), GROUP)]
    assert names == [second.consumer]
    for stream in second.streams:
        assert first.consumer not in [c["name"].decode() for c in await ctx.redis.xinfo_consumers(stream, GROUP)]


async def test_trimming_never_drops_unacknowledged_entries(ctx: Context) -> None:
    for amount in range(1, 11):
        await deposit(ctx.ledger, 2, amount)
    dead = await crash_after_write(ctx, batch=3)
    await dead.leases.release_all()  # its leases run out
    live = projector(ctx, batch=100)
    await live.refresh_leases()  # holds the partitions now, the dead one's entries still pending
    await live._trim()
    remaining = await ctx.redis.xrange(outbox(ctx, 2))
    pending = await ctx.redis.xpending_range(outbox(ctx, 2), GROUP, "-", "+", 100)
    assert len(pending) == 3
    assert {p["message_id"] for p in pending} <= {entry_id for entry_id, _ in remaining}
    await live.drain()
    assert sorted(int(d["amount"]) for d in await all_docs(ctx)) == list(range(1, 11))
    assert await ctx.redis.xlen(outbox(ctx, 2)) == 0


class FailingStore(LedgerStore):
    """A store whose inserts fail the way a rejecting MongoDB does (not a duplicate key)."""

    failing = True

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        if self.failing:
            raise BulkWriteError({"writeErrors": [{"index": 0, "code": 121, "errmsg": "validation"}], "nInserted": 0})
        return await super().insert_transactions(docs)


async def test_a_write_error_other_than_duplicate_key_acks_nothing(ctx: Context) -> None:
    for amount in (1, 2, 3):
        await deposit(ctx.ledger, 4, amount)
    store = FailingStore(ctx.mongo)
    p = Projector(ctx.redis, ctx.ledger.keys, store, block_ms=50)
    with pytest.raises(TimeoutError):
        await p.drain(timeout=0.3)
    assert p.entries_acked == 0
    assert (await p.lag())["entries"] == 3
    store.failing = False
    await p.drain()
    assert [int(d["amount"]) for d in await all_docs(ctx)] == [1, 2, 3]


async def test_an_unreadable_entry_goes_to_the_dead_letter_stream(ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 10)
    await ctx.redis.xadd(outbox(ctx, 1), {"txns": "not json"})
    await deposit(ctx.ledger, 1, 20)
    p = projector(ctx)
    await p.drain()
    assert [int(d["amount"]) for d in await all_docs(ctx)] == [10, 20]
    dead = await ctx.redis.xrange(ctx.ledger.keys.outbox_dead(ctx.ledger.keys.partition_of(1)))
    assert len(dead) == 1 and dead[0][1][b"txns"] == b"not json" and p.poisoned == 1


async def test_running_projector_follows_the_stream_and_survives_a_wiped_stream(ctx: Context) -> None:
    p = projector(ctx, block_ms=20)
    await p.start()
    try:
        await deposit(ctx.ledger, 1, 111)
        await p.drain()
        await ctx.redis.delete(outbox(ctx, 1))  # Redis lost the stream and its group
        await deposit(ctx.ledger, 1, 222)
        for _ in range(200):
            if len(await all_docs(ctx)) == 2:
                break
            await asyncio.sleep(0.02)
        assert [int(d["amount"]) for d in await all_docs(ctx)] == [111, 222]
    finally:
        await p.stop()
    assert not p.running
    consumers = await ctx.redis.xinfo_consumers(outbox(ctx, 1), GROUP)
    assert p.consumer not in [c["name"].decode() for c in consumers]  # a clean stop leaves the group


async def test_indexes_exist_after_the_first_batch(ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 1)
    await projector(ctx).drain()
    info = await ctx.mongo.transactions.index_information()
    keys = {tuple(k for k, _ in spec["key"]) for spec in info.values()}
    assert {("user_id", "created_at", "_id"), ("user_id", "amount", "_id"), ("type", "created_at")} <= keys
    assert ("service_id", "order_id", "created_at", "_id") in keys  # the console's order look-up


async def test_records_in_stream_are_strings_as_agreed(ctx: Context) -> None:
    await run(ctx.ledger, ctx.ledger.reserve_call(1, 1, 1, 5, None, None))  # refused: no account
    await deposit(ctx.ledger, 1, 5)
    raw = await ctx.redis.xrange(outbox(ctx, 1))
    assert len(raw) == 1  # a refusal writes no transaction
    record = orjson.loads(raw[0][1][b"txns"])[0]
    assert all(isinstance(v, str) for v in record.values())


class SlowStore(LedgerStore):
    """A store whose inserts take a while, so stop() arrives with a batch in hand."""

    started: asyncio.Event

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        self.started.set()
        await asyncio.sleep(0.3)
        return await super().insert_transactions(docs)


async def test_stop_finishes_the_batch_in_hand(ctx: Context) -> None:
    for amount in (5, 6, 7):
        await deposit(ctx.ledger, 1, amount)
    store = SlowStore(ctx.mongo)
    store.started = asyncio.Event()
    p = Projector(ctx.redis, ctx.ledger.keys, store, block_ms=50)
    await p.start()
    await asyncio.wait_for(store.started.wait(), 10)
    await p.stop()
    assert p.entries_acked == 3
    assert [int(d["amount"]) for d in await all_docs(ctx)] == [5, 6, 7]
    assert (await ctx.redis.xpending(outbox(ctx, 1), GROUP))["pending"] == 0


class BlockedStore(LedgerStore):
    """A store whose inserts wait until the test lets them go: a MongoDB slower than a projector's lease."""

    started: asyncio.Event
    go: asyncio.Event

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        self.started.set()
        await self.go.wait()
        return await super().insert_transactions(docs)


LEASE_MS = 1000  # renewed every third: a loaded machine's event loop has room to spare


async def blocked_projector(ctx: Context) -> tuple[Projector, BlockedStore]:
    """A running projector with deposits 5, 6, 7 of user 1 in hand, its write to MongoDB held."""
    for amount in (5, 6, 7):
        await deposit(ctx.ledger, 1, amount)
    store = BlockedStore(ctx.mongo)
    store.started, store.go = asyncio.Event(), asyncio.Event()
    slow = Projector(ctx.redis, ctx.ledger.keys, store, block_ms=50, claim_idle_ms=LEASE_MS)
    await slow.start()
    await asyncio.wait_for(store.started.wait(), 10)
    assert ctx.ledger.keys.partition_of(1) in slow.leases.owned
    return slow, store


async def test_a_projector_keeps_its_partitions_through_a_write_longer_than_its_lease(ctx: Context) -> None:
    """The leases are renewed apart from projecting: while one write takes two and a half leases' time, no
    other projector takes a partition; and so while stop() waits for that write."""
    slow, store = await blocked_projector(ctx)
    other = projector(ctx, claim_idle_ms=LEASE_MS)
    stopping: asyncio.Task[None] | None = None
    try:
        held = set(slow.leases.owned)
        await asyncio.sleep(2.5 * LEASE_MS / 1000)
        await other.refresh_leases()
        assert other.leases.owned.isdisjoint(held)
        assert slow.leases.owned == held
        stopping = asyncio.create_task(slow.stop())  # waits for the batch in hand
        await asyncio.sleep(2.5 * LEASE_MS / 1000)
        await other.refresh_leases()
        assert other.leases.owned.isdisjoint(held)
        store.go.set()
        await stopping
        assert slow.entries_acked == 3
        await other.refresh_leases()  # given back at stop: the other takes them at once
        assert held <= other.leases.owned
    finally:
        store.go.set()
        if stopping is not None:
            await stopping
        await slow.stop()
        await other.stop()
    assert [int(d["amount"]) for d in await all_docs(ctx)] == [5, 6, 7]


async def test_a_projector_stuck_in_a_write_lets_its_partitions_go(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that never returns stops the heartbeat's renewals after STALL_SECONDS: another projector takes
    the partitions and projects every transaction."""
    monkeypatch.setattr("billing.projection.projector.STALL_SECONDS", 1.0)
    slow, store = await blocked_projector(ctx)
    other = projector(ctx, claim_idle_ms=LEASE_MS)
    try:
        await asyncio.sleep(1.0 + 2 * LEASE_MS / 1000)  # stalled, then its leases ran out
        await other.drain(timeout=10)
        assert [int(d["amount"]) for d in await all_docs(ctx)] == [5, 6, 7]
    finally:
        store.go.set()
        await slow.stop()
        await other.stop()


async def test_a_lease_the_heartbeat_finds_lost_is_not_taken_over_from(ctx: Context) -> None:
    """A partition lost between two rounds leaves the projector at once: its next refresh is due, and its
    pending entries are left to the new holder (no XAUTOCLAIM from it)."""
    await deposit(ctx.ledger, 1, 5)
    partition = ctx.ledger.keys.partition_of(1)
    p = projector(ctx)
    try:
        await p.refresh_leases()
        await p._prepare()  # the consumer groups
        assert partition in p.leases.owned and partition in p._taken_over
        await ctx.redis.set(ctx.ledger.keys.projector_lease(partition), "another projector")
        await ctx.redis.xreadgroup(GROUP, "another projector", {outbox(ctx, 1): ">"})  # pending under it now
        await p.leases.renew()
        assert partition not in p.leases.owned
        assert p.leases.due()
        assert all(stream != outbox(ctx, 1) for stream, _entries in await p._take_over())
        assert partition not in p._taken_over
    finally:
        await p.stop()


async def test_readiness_stays_ok_while_history_lags_and_reports_it(api: Api, ctx: Context) -> None:
    for amount in ("1.00", "2.00"):
        assert (await api.deposit(1, amount)).status == 201
    await asyncio.sleep(0.02)
    ready = await api.get("/readyz", token=None)
    assert ready.status == 200
    outbox = ready.json["checks"]["outbox"]
    assert outbox["entries"] == 2 and outbox["oldest_age_seconds"] > 0
    await ctx.projector.drain()
    ready = await api.get("/readyz", token=None)
    assert ready.json["checks"]["outbox"] == {"entries": 0, "oldest_age_seconds": 0.0}


async def test_an_id_reused_with_other_content_goes_to_the_conflict_stream(
    ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    await deposit(ctx.ledger, 5, 100)
    p = projector(ctx)
    await p.drain()
    metrics = Metrics()
    p.on_conflict = metrics.observe_projector_conflicts
    # Redis lost its sequence: the same id now names another transaction (user 28 shares user 5's partition).
    partition = ctx.ledger.keys.partition_of(5)
    assert ctx.ledger.keys.partition_of(28) == partition
    first_id = 1024 + partition
    await ctx.redis.hset(ctx.ledger.keys.meta(partition), "seq", "0")
    await deposit(ctx.ledger, 28, 777)
    with caplog.at_level(logging.ERROR, logger="billing.projection.projector"):
        await p.drain()
    docs = await all_docs(ctx)
    assert [(int(d["_id"]), int(d["user_id"]), int(d["amount"])) for d in docs] == [(first_id, 5, 100)]  # as it was
    conflicts = await ctx.redis.xrange(ctx.ledger.keys.outbox_conflicts(partition))
    assert len(conflicts) == 1
    kept = orjson.loads(conflicts[0][1][b"txn"])
    assert conflicts[0][1][b"id"] == str(first_id).encode() and kept["user_id"] == 28 and kept["amount"] == 777
    assert orjson.loads(conflicts[0][1][b"stored"])["user_id"] == 5
    assert p.conflicts == 1 and metrics.registry.get_sample_value("billing_projector_conflicts_total") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"transaction id {first_id} " in message and "other content" in message for message in errors)
    assert (await p.lag())["entries"] == 0  # acknowledged: kept for a human, not retried forever


async def test_an_identical_duplicate_stays_silent(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    await deposit(ctx.ledger, 5, 100)
    await deposit(ctx.ledger, 5, 200)
    raw = await ctx.redis.xrange(outbox(ctx, 5))
    p = projector(ctx)
    await p.drain()
    for _entry_id, entry in raw:  # a replay of the same entries (a lost XACK)
        await ctx.redis.xadd(outbox(ctx, 5), entry)
    with caplog.at_level(logging.WARNING):
        await p.drain()
    assert p.duplicates_skipped == 2 and p.conflicts == 0
    assert await ctx.redis.xlen(ctx.ledger.keys.outbox_conflicts(ctx.ledger.keys.partition_of(5))) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
