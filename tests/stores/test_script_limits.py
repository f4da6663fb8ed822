"""The scripts enforce the limits billing/core defines: they are handed to Lua when the scripts are built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from billing.core.money import MAX_BALANCE_KOPECKS, MAX_OPERATION_KOPECKS
from billing.core.parsing import MAX_ID
from billing.ledger.outcomes import Applied, Refused
from billing.ledger.scripts import Ledger, Limits, ReservationRecord, Restore, build_library
from billing.projection import recovery

TTL = 90_000


def test_the_library_is_built_with_the_limits_of_billing_core() -> None:
    code = build_library().code
    assert (
        f"local MAX_BALANCE = {MAX_BALANCE_KOPECKS}\n"
        f"local MAX_AMOUNT = {MAX_OPERATION_KOPECKS}\n"
        f"local MAX_ID = '{MAX_ID}'\n"
    ) in code.split("\n--[[", 1)[0]  # before the prelude
    # and the prelude states none of them itself; other limits make another library, with functions of its own
    small = build_library(Limits(max_balance=7, max_amount=5, max_id=9))
    assert str(MAX_BALANCE_KOPECKS) not in small.code and str(MAX_ID) not in small.code
    assert small.name != build_library().name and set(small.functions.values()).isdisjoint(
        build_library().functions.values()
    )


async def test_a_smaller_balance_cap_is_what_the_scripts_refuse_at(redis_client: Redis, prefix: str) -> None:
    ledger = Ledger(redis_client, prefix, TTL, Limits(max_balance=1_000, max_amount=600))
    await ledger.load_scripts()
    assert isinstance(await ledger.run(*_call(ledger.deposit_call(1, 600, None))), Applied)
    assert await ledger.run(*_call(ledger.deposit_call(1, 401, None))) == Refused("balance_limit_exceeded")
    assert isinstance(await ledger.run(*_call(ledger.deposit_call(1, 400, None))), Applied)
    assert await ledger.run(*_call(ledger.transfer_call(2, 1, 1, None))) == Refused("account_not_found")
    await ledger.run(*_call(ledger.deposit_call(2, 1, None)))
    assert await ledger.run(*_call(ledger.transfer_call(2, 1, 1, None))) == Refused("balance_limit_exceeded")
    # an amount over the operation limit is a call the service never makes: an error, nothing changed
    with pytest.raises(ResponseError, match="amount"):
        await ledger.run(*_call(ledger.deposit_call(3, 601, None)))
    assert await ledger.balance(1) == (1_000, 0) and await ledger.balance(3) is None


async def test_a_smaller_id_limit_is_what_the_scripts_accept(redis_client: Redis, prefix: str) -> None:
    ledger = Ledger(redis_client, prefix, TTL, Limits(max_id=99))
    await ledger.load_scripts()
    assert isinstance(await ledger.run(*_call(ledger.deposit_call(99, 1, None))), Applied)
    with pytest.raises(ResponseError, match="user_id is not an id"):
        await ledger.run(*_call(ledger.deposit_call(100, 1, None)))
    assert await ledger.balance(100) is None


def _call(call: tuple[str, list[str], list[object]]) -> tuple[str, None, str, list[str], list[object]]:
    name, keys, args = call
    return name, None, "", keys, args


async def test_rebuild_writes_go_through_the_scripts_and_their_bounds(redis_client: Redis, prefix: str) -> None:
    """`billing rebuild` writes the layout with lua/restore.lua, which checks what it writes as the scripts
    check what they read: a value beyond a limit is an error, and nothing is written."""
    ledger = Ledger(redis_client, prefix, TTL)
    restore = Restore(redis_client, ledger.keys, Limits(max_balance=1_000, max_amount=500))
    await restore.load()
    for write in (
        lambda pipe: restore.account(pipe, 1, 900, 101),
        lambda pipe: restore.reservation(pipe, ReservationRecord(1, 2, 3, 501, "reserved", None, 1, 1), 1),
        lambda pipe: restore.reservation(pipe, ReservationRecord(1, 2, 3, 5, "lost", None, 1, 1), 1),
        lambda pipe: restore.reservation(pipe, ReservationRecord(1, 2, 3, 5, "reserved", None, 1, 1, 2**53), 1),
        # refunds beyond the charge, or of a reservation not recognized
        lambda pipe: restore.reservation(
            pipe, ReservationRecord(1, 2, 3, 5, "recognized", 4, 1, 1, refunded_amount=5), 1
        ),
        lambda pipe: restore.reservation(
            pipe, ReservationRecord(1, 2, 3, 5, "cancelled", None, 1, 1, refunded_amount=1), 1
        ),
    ):
        pipe = redis_client.pipeline(transaction=False)
        write(pipe)
        with pytest.raises(ResponseError, match="ledger: "):
            await pipe.execute()
    assert [key async for key in redis_client.scan_iter(match=prefix + "*")] == []
    pipe = redis_client.pipeline(transaction=False)
    restore.account(pipe, 1, 900, 100)
    restore.reservation(pipe, ReservationRecord(1, 2, 3, 100, "reserved", None, 5, 6, 9_000), 6)
    await pipe.execute()
    assert await ledger.balance(1) == (900, 100)
    assert (await ledger.reservation(1, 2, 3) or {}).get("status") == "expired"  # 9 s after 1970: long past
    assert await redis_client.zrange(ledger.keys.expiry(ledger.keys.partition_of(1)), 0, -1) == [b"1:2:3"]
    pipe = redis_client.pipeline(transaction=False)
    restore.reservation(pipe, ReservationRecord(1, 2, 4, 100, "recognized", 80, 5, 7, refunded_amount=80), 7)
    await pipe.execute()
    assert (await ledger.reservation(1, 2, 4) or {}).get("refunded_amount") == "80"
    assert await restore.meta(4, 7, 10) == (7, 10) and await restore.meta(4, 3, 20) == (7, 20)  # never lowered
    assert await restore.meta(5, 1, 1) == (1, 1)  # each partition its own
    with pytest.raises(ResponseError, match="ledger: "):  # a sequence beyond the ids below 2^53
        await restore.meta(4, 2**43, 30)


def test_recovery_writes_no_ledger_key_itself() -> None:
    source = Path(recovery.__file__).read_text()
    assert not re.search(r"\.(hset|hmset|hincrby|set|xadd)\(", source)
