"""The scripts enforce the limits billing/core defines: they are handed to Lua when the scripts are built."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from billing.core.money import MAX_BALANCE_KOPECKS, MAX_OPERATION_KOPECKS
from billing.core.parsing import MAX_ID
from billing.ledger.outcomes import Applied, Refused
from billing.ledger.scripts import Ledger, Limits, load_script_sources

TTL = 90_000


def test_the_scripts_are_built_with_the_limits_of_billing_core() -> None:
    for source in load_script_sources().values():
        assert source.startswith(
            f"local MAX_BALANCE = {MAX_BALANCE_KOPECKS}\n"
            f"local MAX_AMOUNT = {MAX_OPERATION_KOPECKS}\n"
            f"local MAX_ID = '{MAX_ID}'\n"
        )
    # and the prelude states none of them itself
    prelude = load_script_sources(Limits(max_balance=7, max_amount=5, max_id=9))["deposit"]
    assert str(MAX_BALANCE_KOPECKS) not in prelude and str(MAX_ID) not in prelude


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
