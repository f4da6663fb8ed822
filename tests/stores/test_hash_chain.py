"""The ledger's hash chain on mongomock and SecantusDB: every transaction's `hash` as the contract computes it,
through out-of-order landings, two projectors, a crash between insert and XACK, a restart and a rebuild; and
`billing verify` naming an edited or deleted transaction."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.commands import run_verify
from billing.core.config import Settings
from billing.projection.projector import Projector
from billing.projection.recovery import rebuild
from billing.projection.store import LedgerStore
from billing.projection.verify import verify_chains
from tests.stores.test_watermark import HeldStore, share_partitions
from tests.support.api import Api
from tests.support.workload import deposit, run

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)

ZEROS = "0" * 64


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests drive their own projectors."""
    return settings.model_copy(update={"projector_enabled": False})


def projector(ctx: Context, store: LedgerStore | None = None, **kwargs: Any) -> Projector:
    options = {"batch": 4, "block_ms": 20, "claim_idle_ms": 10_000, **kwargs}
    return Projector(ctx.redis, ctx.ledger.keys, store or LedgerStore(ctx.mongo), **options)


# ---- the contract, written out here (not billing/core/chain.py) ------------------------------------------


def money(kopecks: int) -> str:
    sign = "-" if kopecks < 0 else ""
    return f"{sign}{abs(kopecks) // 100}.{abs(kopecks) % 100:02d}"


def moment(value: datetime) -> str:
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def contract_json(fields: dict[str, Any]) -> bytes:
    covered = [
        "id",
        "user_id",
        "type",
        "amount",
        "available_after",
        "reserved_after",
        "created_at",
        "comment",
        "service_id",
        "order_id",
        "counterparty_user_id",
    ]
    kept = {k: fields[k] for k in covered if fields.get(k) is not None}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def contract_link(previous: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(previous.encode("utf-8") + contract_json(fields)).hexdigest()


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document's fields as the history shows them."""
    out = {"id": int(doc["_id"]), "user_id": int(doc["user_id"]), "type": doc["type"]}
    for name in ("amount", "available_after", "reserved_after"):
        out[name] = money(int(doc[name]))
    out["created_at"] = moment(doc["created_at"])
    out["comment"] = doc.get("comment") or None
    for name in ("service_id", "order_id", "counterparty_user_id"):
        if doc.get(name) is not None:
            out[name] = int(doc[name])
    return out


async def assert_every_chain_holds(ctx: Context) -> int:
    """Every stored hash equals the contract's, each user's chain in id order; the transactions checked."""
    docs = await ctx.mongo.transactions.find({}).sort("_id", 1).to_list(None)
    heads: dict[int, str] = {}
    for doc in docs:
        user = int(doc["user_id"])
        expected = contract_link(heads.get(user, ZEROS), shown(doc))
        assert doc.get("hash") == expected, (doc, expected)
        heads[user] = expected
    report = await verify_chains(LedgerStore(ctx.mongo))
    assert report.breaks == [] and report.transactions == len(docs) and report.users == len(heads)
    return len(docs)


async def some_money_moves(ctx: Context, users: range, rounds: int = 3) -> None:
    ledger = ctx.ledger
    for n in range(rounds):
        for user in users:
            await deposit(ledger, user, 10_000 + n, "пополнение «карта» ✓" if n % 2 else None)
            await run(ledger, ledger.transfer_call(user, user + 1, 100 + n, "за обед"))
            await run(ledger, ledger.reserve_call(user, 3, user * 100 + n, 500, "Хостинг", None))
            await run(ledger, ledger.recognize_call(user, 3, user * 100 + n, 400))


# ---- the links -------------------------------------------------------------------------------------------


async def test_history_and_events_show_each_link_as_the_contract_computes_it(api: Api, ctx: Context) -> None:
    salary = {"user_id": 1, "amount": "100.50", "comment": "Зарплата «ноябрь» 🎉"}
    assert (await api.post("/v1/deposits", salary, token="tok-payments")).status == 201
    transfer = {"from_user_id": 1, "to_user_id": 2, "amount": "10.25"}
    assert (await api.post("/v1/transfers", transfer, token="tok-payments")).status == 201
    assert (await api.deposit(2, "1.00")).status == 201
    await projector(ctx).drain()
    for user in (1, 2):
        r = await api.get(f"/v1/users/{user}/transactions?order=asc", token="tok-support")
        assert r.status == 200, r.body
        previous = ZEROS
        for item in r.json["items"]:
            assert item["hash"] == contract_link(previous, {**item, "user_id": user}), item
            previous = item["hash"]
    r = await api.get("/v1/events", token="tok-events")
    assert r.status == 200, r.body
    stored = {int(d["_id"]): d["hash"] async for d in ctx.mongo.transactions.find({})}
    assert len(r.json["items"]) == 4
    assert all(event["data"]["hash"] == stored[event["id"]] for event in r.json["items"])
    await assert_every_chain_holds(ctx)


async def test_links_survive_out_of_order_landing_two_projectors_a_crash_and_a_restart(ctx: Context) -> None:
    users = range(1, 6)
    await some_money_moves(ctx, users, rounds=1)
    # one batch lands in MongoDB out of order: its last 3 first
    held = HeldStore(ctx.mongo, early=3)
    task = asyncio.create_task(projector(ctx, held, batch=8).drain(timeout=60))
    await asyncio.wait_for(held.entered.wait(), 10)
    held.release.set()
    await task
    # two projectors alive, sharing the partitions, at once
    await some_money_moves(ctx, users, rounds=2)
    first, second = projector(ctx), projector(ctx)
    await share_partitions(ctx, first, second)
    await asyncio.gather(first.drain(timeout=30), second.drain(timeout=30))
    # a projector dies between MongoDB's confirmation and its XACK; another takes its partitions over
    await some_money_moves(ctx, users, rounds=1)
    doomed = projector(ctx)

    class Crash(BaseException):
        pass

    async def die(ids: list[str]) -> None:
        raise Crash()

    doomed.before_ack = die
    with pytest.raises(Crash):
        await doomed.drain()
    await doomed.leases.release_all()  # its leases run out
    rescuer = projector(ctx)
    await rescuer.drain()
    assert rescuer.entries_claimed > 0 and rescuer.duplicates_skipped > 0
    # a running projector, stopped and replaced by a new one (its heads in memory are gone)
    running = projector(ctx)
    await running.start()
    await some_money_moves(ctx, users, rounds=1)
    await running.drain()
    await running.stop()
    await some_money_moves(ctx, users, rounds=1)
    fresh = projector(ctx)
    await fresh.drain()
    assert fresh.chainer.lookups > 0  # it read the chains' heads from MongoDB
    assert await assert_every_chain_holds(ctx) > 100


async def test_a_rebuilt_redis_goes_on_from_the_stored_chains(ctx: Context) -> None:
    await some_money_moves(ctx, range(1, 4), rounds=2)
    await projector(ctx).drain()
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)  # Redis lost: rebuilt from the ledger
    await rebuild(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo))
    await some_money_moves(ctx, range(1, 4), rounds=1)
    await projector(ctx).drain()
    await assert_every_chain_holds(ctx)
    code, text = await run_verify(ctx, None, drain_timeout=10)
    assert code == 0, text


# ---- billing verify --------------------------------------------------------------------------------------


async def projected(ctx: Context) -> list[dict[str, Any]]:
    await some_money_moves(ctx, range(1, 5), rounds=2)
    await projector(ctx).drain()
    return await ctx.mongo.transactions.find({"user_id": 2}).sort("_id", 1).to_list(None)


async def test_verify_passes_on_a_clean_ledger(ctx: Context) -> None:
    await projected(ctx)
    code, text = await run_verify(ctx, None, drain_timeout=10)
    count = await ctx.mongo.transactions.count_documents({})
    assert code == 0, text
    first = text.splitlines()[0]
    assert first.startswith(f"verify: {count} transactions of 5 users in ") and first.endswith(": OK")
    assert "transactions/s" in first
    assert text.splitlines()[1].startswith("reconcile: ") and text.splitlines()[1].endswith(": OK")


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", 1), ("comment", "подменён"), ("created_at", datetime(2020, 1, 1, tzinfo=UTC)), ("hash", ZEROS)],
)
async def test_verify_names_an_edited_transaction(ctx: Context, field: str, value: Any) -> None:
    docs = await projected(ctx)
    victim = docs[3]
    await ctx.mongo.transactions.update_one({"_id": victim["_id"]}, {"$set": {field: value}})
    code, text = await run_verify(ctx, None, drain_timeout=10)
    assert code == 1, text
    breaks = [line for line in text.splitlines() if line.startswith("  BREAK ")]
    assert len(breaks) == 1, text
    if field == "created_at":  # moved before its predecessors: the chain's id order names it out of place
        assert breaks[0].startswith("  BREAK user 2 transaction ")
        assert "out of id order" in breaks[0] or f"transaction {int(victim['_id'])}:" in breaks[0]
    else:
        assert breaks[0].startswith(f"  BREAK user 2 transaction {int(victim['_id'])}: ")
        assert f"stored {value if field == 'hash' else victim['hash']})" in breaks[0]
        recomputed = contract_link(docs[2]["hash"], shown({**victim, field: value}))
        assert f"expected {recomputed}," in breaks[0]


async def test_verify_names_the_transaction_after_a_deleted_one(ctx: Context) -> None:
    docs = await projected(ctx)
    await ctx.mongo.transactions.delete_one({"_id": docs[3]["_id"]})
    code, text = await run_verify(ctx, None, drain_timeout=10)
    assert code == 1, text
    assert f"  BREAK user 2 transaction {int(docs[4]['_id'])}: " in text
    assert f"expected {contract_link(docs[2]['hash'], shown(docs[4]))}, stored {docs[4]['hash']})" in text


async def test_a_deleted_last_transaction_shows_in_the_totals(ctx: Context) -> None:
    docs = await projected(ctx)
    await ctx.mongo.transactions.delete_one({"_id": docs[-1]["_id"]})
    code, text = await run_verify(ctx, None, drain_timeout=10)
    assert code == 1, text
    assert "BREAK" not in text  # nothing chains from it
    assert "MISMATCH account user 2 (available, reserved)" in text


async def test_verify_of_one_user_checks_that_users_chain_only(ctx: Context) -> None:
    docs = await projected(ctx)
    await ctx.mongo.transactions.update_one({"_id": docs[1]["_id"]}, {"$set": {"comment": "edited"}})
    store = LedgerStore(ctx.mongo)
    mine = await verify_chains(store, user_id=2)
    assert [(b.user_id, b.transaction_id) for b in mine.breaks] == [(2, int(docs[1]["_id"]))]
    assert mine.users == 1 and mine.transactions == len(docs)
    other = await verify_chains(store, user_id=3)
    assert other.breaks == [] and other.users == 1
    code, text = await run_verify(ctx, 3, drain_timeout=10)
    assert code == 0, text
    code, text = await run_verify(ctx, 2, drain_timeout=10)
    assert code == 1 and f"BREAK user 2 transaction {int(docs[1]['_id'])}: " in text


async def test_a_chain_head_is_found_behind_any_number_of_replayed_transactions(ctx: Context) -> None:
    """A replayed batch may find its own transactions (and later ones of a re-sliced read) in MongoDB already:
    the head before a transaction is the user's last one with a smaller id, however many come after it."""
    await some_money_moves(ctx, range(1, 3), rounds=3)
    await projector(ctx).drain()
    docs = await ctx.mongo.transactions.find({"user_id": 1}).sort("_id", 1).to_list(None)
    store = LedgerStore(ctx.mongo)
    third = docs[2]
    for later in (0, 1, len(docs)):  # fewer rows after it than there are, exactly, more
        assert await store.previous_link(1, third["created_at"], int(third["_id"]), later) == (True, docs[1]["hash"])
    first = docs[0]
    assert await store.previous_link(1, first["created_at"], int(first["_id"]), 0) == (False, None)
