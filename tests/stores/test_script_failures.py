"""A script that cannot finish an operation changes nothing: every check comes before its first write.

Redis keeps a script's writes when it fails halfway, so an error after the first write would leave money
moved without its idempotency record or outbox entry. Each case corrupts the ledger (or sends a bad
argument) where an operation must fail, then runs the operation alone and in a batch script run, and
compares every key of the ledger before and after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import tornado.httpserver
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from billing.app import make_app
from billing.bootstrap import bootstrap
from billing.core.config import MAX_PARTITIONS, Settings
from billing.infra import redis_raw
from billing.ledger.outcomes import Applied
from billing.ledger.scripts import Idempotency, Ledger
from billing.ledger.service import OPERATIONS, MoneyOperations
from tests.support.answers import run_many
from tests.support.api import Api
from tests.support.servers import RedisServer, free_port
from tests.support.state import PROJECTOR_BOOKKEEPING

TTL = 90_000
FP = "f" * 64
IDEM = Idempotency("tok", "k-1")


async def snapshot(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key of one ledger with its type and whole content (stream ids included); not the projectors'
    registry and leases, which they renew as time passes."""
    state: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=prefix + "*", count=1000):
        if raw.endswith(PROJECTOR_BOOKKEEPING):
            continue
        kind = (await redis.type(raw)).decode()
        if kind == "hash":
            value: Any = await redis.hgetall(raw)
        elif kind == "stream":
            value = await redis.xrange(raw)
        elif kind == "zset":
            value = await redis.zrange(raw, 0, -1, withscores=True)
        else:
            value = await redis.get(raw)
        state[raw.decode()] = (kind, value)
    return state


async def reconcile(redis: Redis, ledger: Ledger) -> None:
    """Money is conserved: the accounts hold what was deposited minus withdrawn minus revenue plus refunds."""
    held = 0
    async for key in redis.scan_iter(match=ledger.keys.account_pattern(), count=1000):
        account = await redis.hgetall(key)
        held += int(account[b"available"]) + int(account.get(b"reserved", b"0"))
    totals = await ledger.totals()
    net = totals.get("deposited", 0) - totals.get("withdrawn", 0) - totals.get("revenue", 0)
    assert held == net + totals.get("refunded", 0)


async def ledger_with_money(redis: Redis, prefix: str, ttl: int = TTL) -> Ledger:
    """Users 1 and 2 with money, user 1 with a reservation (service 1, order 1) of 100.00 named Ads."""
    ledger = Ledger(redis, prefix, ttl)
    await ledger.load_scripts()
    for call in (
        ledger.deposit_call(1, 100_000, None),
        ledger.deposit_call(2, 50_000, None),
        ledger.reserve_call(1, 1, 1, 10_000, "Ads", None),
    ):
        outcome = await ledger.run(*call[:1], None, "", *call[1:])
        assert isinstance(outcome, Applied), outcome
    return ledger


Call = tuple[str, Idempotency | None, str, list[str], list[Any]]
Setup = Callable[[Redis, Ledger], Awaitable[Call]]


def plain(call: tuple[str, list[str], list[Any]], idem: Idempotency | None = None) -> Call:
    name, keys, args = call
    return name, idem, FP if idem else "", keys, args


async def meta_seq_garbage(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.meta(ledger.keys.partition_of(1)), "seq", "x")
    return plain(ledger.deposit_call(1, 100, None))


async def meta_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.meta(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.meta(ledger.keys.partition_of(1)), "not a hash")
    return plain(ledger.deposit_call(1, 100, None))


async def meta_clock_garbage(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.meta(ledger.keys.partition_of(1)), "clock", "soon")
    return plain(ledger.withdraw_call(1, 100, None))


async def outbox_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.outbox(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.outbox(ledger.keys.partition_of(1)), "not a stream")
    return plain(ledger.deposit_call(1, 100, None))


async def totals_garbage(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.totals(ledger.keys.partition_of(1)), "deposited", "1e3")
    return plain(ledger.deposit_call(1, 100, None))


async def totals_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.totals(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.totals(ledger.keys.partition_of(1)), "0")
    return plain(ledger.withdraw_call(1, 100, None))


# A transfer within one partition (users 1, 24 and 42 share one) is one script: a broken recipient fails it
# whole. Between partitions the recipient is checked by the credit, after the debit: the money stays in
# transit until the account is repaired (tests/stores/test_transfers_between_partitions.py).
async def recipient_fraction(redis: Redis, ledger: Ledger) -> Call:
    assert ledger.keys.partition_of(24) == ledger.keys.partition_of(1)
    await redis.hset(ledger.keys.account(24), "available", "1.5")
    return plain(ledger.transfer_call(1, 24, 100, None))


async def recipient_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    assert ledger.keys.partition_of(42) == ledger.keys.partition_of(1)
    await redis.set(ledger.keys.account(42), "not a hash")
    return plain(ledger.transfer_call(1, 42, 100, None))


async def reserved_garbage(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.account(2), "reserved", "x")
    return plain(ledger.withdraw_call(2, 100, None))


async def available_leading_zero(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.account(2), "available", "050000")
    return plain(ledger.deposit_call(2, 100, None))


async def account_without_available(redis: Redis, ledger: Ledger) -> Call:
    await redis.hdel(ledger.keys.account(2), "available")
    return plain(ledger.deposit_call(2, 100, None))


async def services_wrong_type_reserve(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.services(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.services(ledger.keys.partition_of(1)), "not a hash")
    return plain(ledger.reserve_call(1, 1, 2, 100, None, None))


async def services_wrong_type_recognize(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.services(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.services(ledger.keys.partition_of(1)), "not a hash")
    return plain(ledger.recognize_call(1, 1, 1, 4_000))


async def services_wrong_type_cancel(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.services(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.services(ledger.keys.partition_of(1)), "not a hash")
    return plain(ledger.cancel_call(1, 1, 1, None))


async def reservation_without_account(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.account(1))
    return plain(ledger.recognize_call(1, 1, 1, 4_000))


async def reserved_below_reservation(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.account(1), "reserved", "0")
    return plain(ledger.cancel_call(1, 1, 1, None))


async def reservation_amount_garbage(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.reservation(1, 1, 1), "amount", "1e4")
    return plain(ledger.recognize_call(1, 1, 1, 4_000))


async def reservation_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    await redis.set(ledger.keys.reservation(1, 1, 5), "not a hash")
    return plain(ledger.reserve_call(1, 1, 5, 100, None, None))


async def recognized(ledger: Ledger) -> None:
    """The reservation of user 1 (service 1, order 1) recognized for 40.00 of its 100.00."""
    name, keys, args = ledger.recognize_call(1, 1, 1, 4_000)
    assert isinstance(await ledger.run(name, None, "", keys, args), Applied)


async def refunded_amount_garbage(redis: Redis, ledger: Ledger) -> Call:
    await recognized(ledger)
    await redis.hset(ledger.keys.reservation(1, 1, 1), "refunded_amount", "01")
    return plain(ledger.refund_call(1, 1, 1, 100, None))


async def services_wrong_type_refund(redis: Redis, ledger: Ledger) -> Call:
    await recognized(ledger)
    await redis.delete(ledger.keys.services(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.services(ledger.keys.partition_of(1)), "not a hash")
    return plain(ledger.refund_call(1, 1, 1, 100, None))


async def refund_of_a_recognized_reservation_without_account(redis: Redis, ledger: Ledger) -> Call:
    await recognized(ledger)
    await redis.delete(ledger.keys.account(1))
    return plain(ledger.refund_call(1, 1, 1, 100, None))


async def expiry_index_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    await redis.delete(ledger.keys.expiry(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.expiry(ledger.keys.partition_of(1)), "not a sorted set")
    return plain(ledger.reserve_call(1, 1, 2, 100, None, None))


async def expires_at_garbage(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.reservation(1, 1, 1), "expires_at", "soon")
    return plain(ledger.recognize_call(1, 1, 1, 4_000))


async def services_wrong_type_cancel_past_deadline(redis: Redis, ledger: Ledger) -> Call:
    """The release of a reservation found past its deadline reads the catalog before its first write."""
    await redis.hset(ledger.keys.reservation(1, 1, 1), "expires_at", "1")
    await redis.delete(ledger.keys.services(ledger.keys.partition_of(1)))
    await redis.set(ledger.keys.services(ledger.keys.partition_of(1)), "not a hash")
    return plain(ledger.cancel_call(1, 1, 1, None))


async def expire_reserved_below_reservation(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(ledger.keys.reservation(1, 1, 1), "expires_at", "1")
    await redis.hset(ledger.keys.account(1), "reserved", "0")
    return plain(ledger.expire_call(1, 1, 1))


def record_of_user_1(ledger: Ledger) -> str:
    return ledger.keys.idempotency_record(IDEM, ledger.keys.partition_of(1))[0]


async def idempotency_record_without_fingerprint(redis: Redis, ledger: Ledger) -> Call:
    await redis.set(record_of_user_1(ledger), "garbage")
    return plain(ledger.deposit_call(1, 100, None), IDEM)


async def idempotency_record_not_json(redis: Redis, ledger: Ledger) -> Call:
    await redis.set(record_of_user_1(ledger), FP + "\n{not json")
    return plain(ledger.deposit_call(1, 100, None), IDEM)


async def idempotency_record_wrong_type(redis: Redis, ledger: Ledger) -> Call:
    await redis.hset(record_of_user_1(ledger), "a", "b")
    return plain(ledger.deposit_call(1, 100, None), IDEM)


async def idempotency_ttl_zero(redis: Redis, ledger: Ledger) -> Call:
    ledger.idempotency_ttl = "0"  # SET ... EX 0 is an error
    return plain(ledger.deposit_call(1, 100, None), IDEM)


async def amount_argument_fraction(redis: Redis, ledger: Ledger) -> Call:
    return "deposit", None, "", [ledger.keys.account(7)], [7, "1.5", ""]


async def amount_argument_beyond_bound(redis: Redis, ledger: Ledger) -> Call:
    return "withdraw", None, "", [ledger.keys.account(1)], [1, "-5", ""]


async def user_id_argument_garbage(redis: Redis, ledger: Ledger) -> Call:
    return "transfer", None, "", [ledger.keys.account(1), ledger.keys.account(8)], [1, "x", 100, ""]


CASES: list[Setup] = [
    meta_seq_garbage,
    meta_wrong_type,
    meta_clock_garbage,
    outbox_wrong_type,
    totals_garbage,
    totals_wrong_type,
    recipient_fraction,
    recipient_wrong_type,
    reserved_garbage,
    available_leading_zero,
    account_without_available,
    services_wrong_type_reserve,
    services_wrong_type_recognize,
    services_wrong_type_cancel,
    reservation_without_account,
    reserved_below_reservation,
    reservation_amount_garbage,
    reservation_wrong_type,
    refunded_amount_garbage,
    services_wrong_type_refund,
    refund_of_a_recognized_reservation_without_account,
    expiry_index_wrong_type,
    expires_at_garbage,
    services_wrong_type_cancel_past_deadline,
    expire_reserved_below_reservation,
    idempotency_record_without_fingerprint,
    idempotency_record_not_json,
    idempotency_record_wrong_type,
    idempotency_ttl_zero,
    amount_argument_fraction,
    amount_argument_beyond_bound,
    user_id_argument_garbage,
]


@pytest.mark.parametrize("setup", CASES, ids=[case.__name__ for case in CASES])
async def test_a_failing_operation_changes_nothing(redis_client: Redis, prefix: str, setup: Setup) -> None:
    ledger = await ledger_with_money(redis_client, prefix)
    name, idem, fp, keys, args = await setup(redis_client, ledger)
    before = await snapshot(redis_client, prefix)

    with pytest.raises(ResponseError):
        await ledger.run(name, idem, fp, keys, args)
    assert await snapshot(redis_client, prefix) == before

    try:  # the same operation in a batch script run: an error for it (or for the run), nothing changed
        command = redis_raw.pack(ledger.batch_command([(name, idem, fp, keys, args)]))
        reply = await redis_raw.command(redis_client, command)
    except ResponseError:
        pass
    else:
        assert reply[0] == b"error", reply
    assert await snapshot(redis_client, prefix) == before


# Texts Lua's tonumber() reads as a number but this ledger never writes: each is refused as a stored value.
NOT_CANONICAL = [" 50000", "50000 ", "+50000", "0x1F4", "5e4", "50000.0", "-0", "inf", "nan", "050000", "5_0000"]


@pytest.mark.parametrize("stored", NOT_CANONICAL)
async def test_a_stored_integer_is_read_only_in_the_form_the_ledger_writes(
    redis_client: Redis, prefix: str, stored: str
) -> None:
    ledger = await ledger_with_money(redis_client, prefix)
    await redis_client.hset(ledger.keys.account(2), "available", stored)
    before = await snapshot(redis_client, prefix)
    with pytest.raises(ResponseError, match="is not an integer within"):
        await ledger.run(*plain(ledger.deposit_call(2, 100, None)))
    assert await snapshot(redis_client, prefix) == before


async def test_a_call_after_an_error_starts_from_the_partition_as_stored(redis_client: Redis, prefix: str) -> None:
    """The library's locals outlive each FCALL: a call that failed after reading its partition (its sequence,
    clock and totals) leaves none of that to the next call, which reads the partition again."""
    ledger = Ledger(redis_client, prefix, TTL)
    await ledger.load_scripts()
    partition = ledger.keys.partition_of(1)
    assert ledger.keys.partition_of(24) == partition
    await redis_client.set(ledger.keys.account(24), "not a hash")
    for _ in range(2):  # fails in its check phase, after its partition was read
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await ledger.run("deposit", None, "", *ledger.deposit_call(24, 100, None)[1:])
    # the partition moves on outside that call (as `billing rebuild` raises a sequence)
    await redis_client.hset(ledger.keys.meta(partition), "seq", "50")
    outcome = await ledger.run("deposit", None, "", *ledger.deposit_call(1, 100, None)[1:])
    assert isinstance(outcome, Applied)
    assert int(outcome.body["transaction"]["id"]) == 51 * MAX_PARTITIONS + partition


async def test_an_outbox_that_refuses_its_entry_leaves_the_ids_taken(redis_client: Redis, prefix: str) -> None:
    """A run writes its outbox entries last, after its sequence: were an XADD ever to fail (a stream at its
    largest id, which the ledger never writes), the ids it carried stay taken and no later run reuses one."""
    ledger = Ledger(redis_client, prefix, TTL)
    await ledger.load_scripts()
    partition = ledger.keys.partition_of(1)
    outbox = ledger.keys.outbox(partition)
    await redis_client.xadd(outbox, {"x": "1"}, id="18446744073709551615-18446744073709551615")
    with pytest.raises(ResponseError):
        await ledger.run("deposit", None, "", *ledger.deposit_call(1, 100, None)[1:])
    assert int(await redis_client.hget(ledger.keys.meta(partition), "seq")) == 1
    await redis_client.delete(outbox)
    outcome = await ledger.run("deposit", None, "", *ledger.deposit_call(1, 100, None)[1:])
    assert isinstance(outcome, Applied)
    assert int(outcome.body["transaction"]["id"]) == 2 * MAX_PARTITIONS + partition


async def outbox_users(redis: Redis, ledger: Ledger) -> list[str]:
    """The user of each transaction in the outbox of user 1's partition, in order."""
    entries = await redis.xrange(ledger.keys.outbox(ledger.keys.partition_of(1)))
    return [txn["user_id"] for _, entry in entries for txn in orjson.loads(entry[b"txns"])]


async def test_an_error_stops_the_batch_run_and_completed_operations_stay_whole(
    redis_client: Redis, prefix: str
) -> None:
    """Third of five fails inside Redis: the first two complete (money, record, outbox, totals), the third
    changes nothing, the last two do not run (503, retry). A retry once the key is repaired replays the
    first two and runs the rest."""
    ledger = Ledger(redis_client, prefix, TTL)
    operations = MoneyOperations(ledger)
    users = (1, 24, 42, 51, 65)  # one partition: one script run
    assert {ledger.keys.partition_of(user) for user in users} == {ledger.keys.partition_of(1)}
    await redis_client.set(ledger.keys.account(42), "not a hash")
    spec = OPERATIONS["deposit"]
    items = [
        (spec, spec.model.model_validate({"user_id": user, "amount": f"{n}.00"}), Idempotency("tok", f"k{n}"))
        for n, user in enumerate(users, 1)
    ]

    replies = await run_many(operations, items)
    assert [reply.status for reply in replies] == [201, 201, 500, 503, 503]
    assert [reply.body.get("code") for reply in replies[2:]] == ["internal_error", "unavailable", "unavailable"]
    assert [await ledger.balance(user) for user in (1, 24, 51, 65)] == [(100, 0), (200, 0), None, None]
    records = [
        await redis_client.exists(ledger.keys.idempotency_record(idem, ledger.keys.partition_of(1))[0])
        for _, _, idem in items
    ]
    assert records == [1, 1, 0, 0, 0]
    assert await outbox_users(redis_client, ledger) == ["1", "24"]
    assert int(await redis_client.hget(ledger.keys.meta(ledger.keys.partition_of(1)), "seq")) == 2
    await redis_client.delete(ledger.keys.account(42))
    await reconcile(redis_client, ledger)

    replies = await run_many(operations, items)
    assert [(reply.status, reply.replayed) for reply in replies] == [(201, True)] * 2 + [(201, False)] * 3
    assert [await ledger.balance(user) for user in users] == [(n * 100, 0) for n in range(1, 6)]
    assert await outbox_users(redis_client, ledger) == ["1", "24", "42", "51", "65"]
    assert int(await redis_client.hget(ledger.keys.meta(ledger.keys.partition_of(1)), "seq")) == 5
    await reconcile(redis_client, ledger)


async def test_a_corrupt_ledger_refuses_the_whole_batch_run_before_any_write(redis_client: Redis, prefix: str) -> None:
    """What every operation of a run needs (the meta hash, the totals) is checked once, first."""
    ledger = await ledger_with_money(redis_client, prefix)
    operations = MoneyOperations(ledger)
    await redis_client.hset(ledger.keys.totals(ledger.keys.partition_of(1)), "withdrawn", "lots")
    before = await snapshot(redis_client, prefix)
    spec = OPERATIONS["deposit"]
    items = [(spec, spec.model.model_validate({"user_id": user, "amount": "1.00"}), None) for user in (1, 24)]
    replies = await run_many(operations, items)
    assert [(reply.status, reply.body["code"]) for reply in replies] == [(500, "internal_error")] * 2
    assert await snapshot(redis_client, prefix) == before


async def test_redis_refusing_writes_for_memory_answers_503_and_changes_nothing(
    own_redis: RedisServer, settings: Settings, mongo_db: Any
) -> None:
    """Redis out of memory refuses a script's first write: the operation did not happen, retry it (503),
    alone and in a batch; once memory is back the same request runs."""
    client = Redis.from_url(own_redis.url)
    ctx = await bootstrap(settings, redis=client, mongo=mongo_db)
    await ctx.start()
    port = free_port()
    server = tornado.httpserver.HTTPServer(make_app(ctx))
    server.listen(port, "127.0.0.1")
    api = Api(f"http://127.0.0.1:{port}")
    try:
        await ctx.ledger.load_scripts()
        await ctx.projector.drain()  # its streams, groups and watermarks made before the snapshot
        before = await snapshot(client, settings.redis_prefix)
        await client.config_set("maxmemory", 1)
        deposit = {"user_id": 1, "amount": "1.00"}
        alone = await api.post("/v1/deposits", deposit, token="tok-payments", headers={"Idempotency-Key": "d1"})
        assert (alone.status, alone.json["code"]) == (503, "unavailable")
        batch = await api.post("/v1/batch", {"operations": [{"op": "deposit", **deposit}] * 2}, token="tok-payments")
        assert batch.status == 200
        assert [(r["status"], r["body"]["code"]) for r in batch.json["results"]] == [(503, "unavailable")] * 2
        await client.config_set("maxmemory", 0)
        assert await snapshot(client, settings.redis_prefix) == before
        again = await api.post("/v1/deposits", deposit, token="tok-payments", headers={"Idempotency-Key": "d1"})
        assert again.status == 201 and "Idempotent-Replayed" not in again.headers
    finally:
        api.close()
        server.stop()
        await server.close_all_connections()
        await ctx.stop()
        await client.aclose()
