"""The batch script (lua/_batch.lua) against one script call per operation: same outcomes, same ledger."""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from billing.api.outcomes import Answer
from billing.ledger.scripts import BATCH, BATCH_CHUNK, OUTBOX_ENTRY_TXNS, Idempotency, Ledger
from billing.ledger.service import OPERATIONS, MoneyOperations
from tests.support.answers import run_many, run_one

TTL = 90_000
_MS = re.compile(r'"(created_at|updated_at|expires_at|at:\d+)":"\d+"')
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def random_operations(rng: random.Random, count: int, users: int = 4) -> list[tuple[str, dict[str, Any], str | None]]:
    """Mixed operations crowding a few accounts and orders, with refusals, repeated and reused keys."""
    items: list[tuple[str, dict[str, Any], str | None]] = []
    used_keys: list[str] = []
    for index in range(count):
        if rng.random() < 0.08 and used_keys:
            items.append(rng.choice([item for item in items if item[2] is not None]))  # a retry: replayed
            continue
        op = rng.choice(
            ["deposit", "deposit", "withdrawal", "transfer", "reserve", "reserve", "recognize", "cancel", "refund"]
        )
        user = rng.randint(1, users)
        amount = f"{rng.randint(1, 300)}.{rng.randint(0, 99):02d}"
        ref = {"user_id": user, "service_id": rng.randint(1, 2), "order_id": rng.randint(1, 12)}
        if op in ("deposit", "withdrawal"):
            fields: dict[str, Any] = {"user_id": user, "amount": amount, "comment": rng.choice([None, "", "c"])}
        elif op == "transfer":
            other = user % (users + 1) + 1
            fields = {"from_user_id": user, "to_user_id": other, "amount": amount}
        elif op == "reserve":
            fields = {**ref, "amount": amount, "service_name": rng.choice([None, "Ads", "Hosting"])}
        elif op in ("recognize", "refund"):
            fields = {**ref, "amount": amount}
        else:
            fields = dict(ref)
        key = None
        roll = rng.random()
        if roll < 0.15 and used_keys:
            key = rng.choice(used_keys)  # the key of another request: 422 (or a replay if it is the same)
        elif roll < 0.6:
            key = f"k{index}"
            used_keys.append(key)
        items.append((op, fields, key))
    return items


def prepared(items: list[tuple[str, dict[str, Any], str | None]]) -> list[tuple[Any, Any, Idempotency | None]]:
    out = []
    for op, fields, key in items:
        spec = OPERATIONS[op]
        out.append((spec, spec.model.model_validate(fields), Idempotency("tok", key) if key else None))
    return out


def comparable(value: Any) -> Any:
    """A reply or a ledger record without its wall-clock timestamps (ids are compared as they are)."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    text = _TIMESTAMP.sub("<time>", text)
    text = _MS.sub(r'"\1":"<ms>"', text)
    return orjson.loads(text)


async def ledger_state(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key of one ledger (an outbox as what its entries carry, however many entries), for comparison."""
    state: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
        key = raw.decode()[len(prefix) :]
        kind = (await redis.type(raw)).decode()
        if kind == "hash":
            value: Any = {k.decode(): v.decode() for k, v in (await redis.hgetall(raw)).items()}
            value.pop("clock", None)
        elif kind == "zset":  # an expiry index: its members (their scores are times)
            value = sorted(member.decode() for member in await redis.zrange(raw, 0, -1))
        elif kind == "stream":  # its transactions in order and its catalog changes (a later one wins)
            txns: list[Any] = []
            services: dict[str, Any] = {}
            for _, fields in await redis.xrange(raw):
                txns.extend(orjson.loads(fields.get(b"txns", b"[]")))
                services.update(orjson.loads(fields.get(b"services", b"{}")))
            value = {"txns": txns, "services": services}
        else:
            value = _MS.sub(r'"\1":"<ms>"', (await redis.get(raw)).decode())  # an idempotency record
        state[key] = comparable(value)
    return state


def reply_view(reply: Answer) -> Any:
    return comparable({"status": reply.status, "body": reply.body, "replayed": reply.replayed})


@pytest.mark.parametrize("partitions", [1, 16])
@pytest.mark.parametrize("seed", [1, 2])
async def test_a_batch_equals_the_same_operations_one_by_one(
    redis_client: Redis, prefix: str, seed: int, partitions: int
) -> None:
    """Over BATCH_CHUNK operations on 4 accounts: every reply, balance, record and outbox transaction is the same,
    with one partition and with 16 (the accounts in several partitions, transfers between them)."""
    items = prepared(random_operations(random.Random(seed), BATCH_CHUNK * 2 + 37))
    one_by_one = MoneyOperations(Ledger(redis_client, prefix + "single:", TTL, partitions=partitions))
    batched = MoneyOperations(Ledger(redis_client, prefix + "batch:", TTL, partitions=partitions))

    expected = []
    for spec, request, idem in items:
        try:
            expected.append(reply_view(await run_one(one_by_one, spec, request, idem)))
        except Exception as exc:  # idempotency_key_reused: the batch answers it in the operation's slot
            expected.append(("error", getattr(exc, "code", type(exc).__name__)))
    got = []
    for reply in await run_many(batched, items):
        if reply.status == 422 and reply.body.get("code") == "idempotency_key_reused":
            got.append(("error", "idempotency_key_reused"))
        else:
            got.append(reply_view(reply))

    assert got == expected
    statuses = {view["status"] for view in expected if isinstance(view, dict)}
    assert {200, 201, 404, 409} <= statuses  # the workload did hit refusals and repeats
    assert ("error", "idempotency_key_reused") in expected
    assert any(view["replayed"] for view in expected if isinstance(view, dict))
    single_state = await ledger_state(redis_client, prefix + "single:")
    batch_state = await ledger_state(redis_client, prefix + "batch:")
    assert batch_state.keys() == single_state.keys()
    assert batch_state == single_state


@pytest.mark.parametrize("count", [1, OUTBOX_ENTRY_TXNS, 2 * OUTBOX_ENTRY_TXNS + 3])
async def test_a_run_appends_its_transactions_in_order_to_entries_of_at_most_outbox_entry_txns(
    redis_client: Redis, prefix: str, count: int
) -> None:
    """One run's deposits reach its partition's outbox in their order, OUTBOX_ENTRY_TXNS to an entry."""
    ledger = Ledger(redis_client, prefix, TTL, partitions=1)
    spec = OPERATIONS["deposit"]
    items = [(spec, spec.model.model_validate({"user_id": n, "amount": "1.00"}), None) for n in range(1, count + 1)]
    assert [reply.status for reply in await run_many(MoneyOperations(ledger), items)] == [201] * count

    entries = [orjson.loads(fields[b"txns"]) for _, fields in await redis_client.xrange(ledger.keys.outbox(0))]
    full, rest = divmod(count, OUTBOX_ENTRY_TXNS)
    assert [len(txns) for txns in entries] == [OUTBOX_ENTRY_TXNS] * full + ([rest] if rest else [])
    txns = [txn for entry in entries for txn in entry]
    assert [txn["user_id"] for txn in txns] == [str(n) for n in range(1, count + 1)]
    ids = [int(txn["id"]) for txn in txns]
    assert ids == sorted(set(ids))


async def test_an_operation_failing_inside_redis_stops_its_run(redis_client: Redis, prefix: str) -> None:
    """A Redis error in one operation of a script run: that one is a 500 and changed nothing, the one before
    it is complete, the one after it did not run (503); more in tests/stores/test_script_failures.py."""
    ledger = Ledger(redis_client, prefix, TTL)
    operations = MoneyOperations(ledger)
    users = (1, 24, 42)  # one partition, so one script run
    partition = ledger.keys.partition_of(1)
    assert {ledger.keys.partition_of(user) for user in users} == {partition}
    await redis_client.set(ledger.keys.account(24), "not a hash")  # HMGET on it fails with WRONGTYPE
    spec = OPERATIONS["deposit"]
    items = [(spec, spec.model.model_validate({"user_id": user, "amount": "1.00"}), None) for user in users]
    replies = await run_many(operations, items)
    assert [reply.status for reply in replies] == [201, 500, 503]
    assert [reply.body["code"] for reply in replies[1:]] == ["internal_error", "unavailable"]
    assert await ledger.balance(1) == (100, 0) and await ledger.balance(42) is None
    assert int(await redis_client.hget(ledger.keys.meta(partition), "seq")) == 1
    assert await redis_client.xlen(ledger.keys.outbox(partition)) == 1
    assert await ledger.totals() == {"deposited": 100}


async def test_a_malformed_batch_call_changes_nothing(redis_client: Redis, prefix: str) -> None:
    ledger = Ledger(redis_client, prefix, TTL)
    await ledger.load_scripts()
    p = ledger.keys.partition_of(1)
    run_keys = [ledger.keys.outbox(p), ledger.keys.meta(p), ledger.keys.totals(p)]
    no_key = ledger.keys.idempotency_record(None, p)[0]
    keys = [*run_keys, no_key, ledger.keys.account(1)]
    good = ["90000", "deposit", "", str(p), "1", "100", ""]
    command = ["FCALL", ledger.library.functions[BATCH], len(keys), *keys]
    await redis_client.execute_command(*command, *good)  # well formed: runs
    assert await ledger.balance(1) == (100, 0)
    await redis_client.delete(ledger.keys.account(1), *run_keys)
    # too few arguments, an unknown operation, two operations with the keys of one
    for args in (good[:-1], [*good, "x", "y"], ["90000", "nope", "", str(p), "1", "100", ""], [*good, *good[1:]]):
        with pytest.raises(ResponseError, match="batch:"):
            await redis_client.execute_command(*command, *args)
    # two operations of different partitions in one run
    other = [*keys, no_key, ledger.keys.account(2)]
    mixed = [*good, "deposit", "", str(ledger.keys.partition_of(2)), "2", "100", ""]
    with pytest.raises(ResponseError, match="batch: operations of more than one partition"):
        await redis_client.execute_command("FCALL", ledger.library.functions[BATCH], len(other), *other, *mixed)
    assert await ledger.balance(1) is None
    assert not await redis_client.exists(*run_keys)


async def test_batch_runs_reload_the_library_after_a_function_flush(redis_client: Redis, prefix: str) -> None:
    """A missing function means the run never happened: every chunk is sent again once, each operation runs once."""
    ledger = Ledger(redis_client, prefix, TTL)
    operations = MoneyOperations(ledger)
    await redis_client.function_flush()
    spec = OPERATIONS["deposit"]
    count = BATCH_CHUNK + 10
    items = [
        (spec, spec.model.model_validate({"user_id": 1, "amount": "0.01"}), Idempotency("tok", f"k{i}"))
        for i in range(count)
    ]
    replies = await run_many(operations, items)
    assert {reply.status for reply in replies} == {201}
    assert await ledger.balance(1) == (count, 0)
    assert int(await redis_client.hget(ledger.keys.meta(ledger.keys.partition_of(1)), "seq")) == count


async def test_text_beyond_ascii_goes_through_a_batch_run_intact(redis_client: Redis) -> None:
    """Lengths in the packed command are UTF-8 bytes: a comment and a key prefix in Cyrillic and emoji."""
    ledger = Ledger(redis_client, "тест:✓:", TTL)
    operations = MoneyOperations(ledger)
    spec = OPERATIONS["deposit"]
    comment = "пополнение 😀 ✓"
    items = [(spec, spec.model.model_validate({"user_id": 1, "amount": "1.00", "comment": comment}), None)] * 2
    replies = await run_many(operations, items)
    assert [reply.body["transaction"]["comment"] for reply in replies] == [comment, comment]
    assert await ledger.balance(1) == (200, 0)
    p = ledger.keys.partition_of(1)
    await redis_client.delete(ledger.keys.account(1), ledger.keys.outbox(p), ledger.keys.meta(p), ledger.keys.totals(p))
