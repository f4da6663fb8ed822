"""A transfer between users of two partitions: debit, credit by the transfer's id, settle (docs/api.md). The
answer waits for both steps; a process dying between them loses and doubles nothing: the recovery loop or a
retry completes it, once, whatever races; a credit over the balance limit reverses the debit; conservation
holds at every step with the money in transit; reconcile and rebuild know transits."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.exceptions import ResponseError

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.ledger.outcomes import Applied, Outcome, Refused
from billing.ledger.scripts import Idempotency, Ledger, Limits
from billing.ledger.service import OPERATIONS, MoneyOperations
from billing.ledger.transits import EVERY_SECONDS, MIN_AGE_MS, TransitRecovery
from billing.projection.projector import Projector
from billing.projection.recovery import money_in_transit, rebuild, reconcile
from billing.projection.store import LedgerStore
from tests.support.api import Api, problem
from tests.support.workload import deposit

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock"], indirect=True)

SENDER, RECIPIENT = 1, 2  # partitions 15 and 5 of 16


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})


class Died(Exception):
    """The process died here (raised by the fault injection hook)."""


def die_once(ledger: Ledger, step: str) -> list[int]:
    """Make the next completion of a transfer stop after `step` (debited or credited); the ids it stopped."""
    stopped: list[int] = []

    async def hook(at: str, transfer_id: int) -> None:
        if at == step and not stopped:
            stopped.append(transfer_id)
            raise Died(at)

    ledger.between_transfer_steps = hook
    return stopped


async def transfer(
    operations: MoneyOperations, amount: str, key: str | None = None, sender: int = SENDER, recipient: int = RECIPIENT
) -> Outcome:
    spec = OPERATIONS["transfer"]
    request = spec.model.model_validate({"from_user_id": sender, "to_user_id": recipient, "amount": amount})
    return await operations.execute(spec, request, Idempotency("tok", key) if key else None, "en")


async def conserved(ledger: Ledger) -> int:
    """Check conservation at one instant; the money in transit."""
    totals, in_transit = await money_in_transit(ledger.redis, ledger.keys)
    balances = 0
    for user in (SENDER, RECIPIENT):
        balance = await ledger.balance(user)
        balances += sum(balance or (0, 0))
    names: set[str] = set().union(*totals)
    t = {name: sum(p.get(name, 0) for p in totals) for name in names}
    assert t.get("deposited", 0) - t.get("withdrawn", 0) - t.get("revenue", 0) == balances + in_transit, (t, balances)
    out = t.get("transfers_out", 0) - t.get("transfers_in", 0) - t.get("transfers_reversed", 0)
    assert out == in_transit, t
    return in_transit


async def stop_recovery(ctx: Context) -> None:
    """This worker's recovery loop would complete what the test looks at: stopped."""
    assert ctx.transit_recovery is not None
    await ctx.transit_recovery.stop()


async def outbox_types(ctx: Context, user: int) -> list[str]:
    entries = await ctx.redis.xrange(ctx.ledger.keys.outbox(ctx.ledger.keys.partition_of(user)))
    return [t["type"] for _, fields in entries for t in orjson.loads(fields[b"txns"]) if int(t["user_id"]) == user]


async def test_the_answer_waits_for_both_steps_and_has_the_shape_of_one_partitions(api: Api, ctx: Context) -> None:
    keys = ctx.ledger.keys
    assert keys.partition_of(SENDER) != keys.partition_of(RECIPIENT)
    assert (await api.deposit(SENDER, "100.00")).status == 201
    body = {"from_user_id": SENDER, "to_user_id": RECIPIENT, "amount": "30.00", "comment": "за обед"}
    r = await api.post("/v1/transfers", body, token="tok-payments", key="t-1")
    assert r.status == 201, r.body
    assert set(r.json) == {"balance", "transaction", "recipient_balance", "recipient_transaction"}
    assert r.json["balance"]["available"] == "70.00" and r.json["recipient_balance"]["available"] == "30.00"
    assert r.json["transaction"]["type"] == "transfer_out" and r.json["recipient_transaction"]["type"] == "transfer_in"
    again = await api.post("/v1/transfers", body, token="tok-payments", key="t-1")
    assert again.status == 201 and again.body == r.body and again.headers.get("Idempotent-Replayed") == "true"
    assert await ctx.ledger.open_transits() == []
    assert await conserved(ctx.ledger) == 0
    assert await outbox_types(ctx, RECIPIENT) == ["transfer_in"]


async def test_a_process_dying_after_the_debit_loses_nothing_and_a_retry_answers_the_final_outcome(
    ctx: Context,
) -> None:
    await stop_recovery(ctx)
    await deposit(ctx.ledger, SENDER, 100_00)
    stopped = die_once(ctx.ledger, "debited")
    with pytest.raises(Died):
        await transfer(ctx.operations, "30.00", key="k")
    assert await ctx.ledger.balance(SENDER) == (70_00, 0) and await ctx.ledger.balance(RECIPIENT) is None
    assert await conserved(ctx.ledger) == 30_00  # in transit
    [(transit, _record)] = await ctx.ledger.open_transits()
    assert int(transit["id"]) == stopped[0]

    retry = await transfer(ctx.operations, "30.00", key="k")
    assert isinstance(retry, Applied) and retry.replayed
    assert retry.body["recipient_balance"]["available"] == "3000" and retry.body["transaction"]["id"] == transit["id"]
    again = await transfer(ctx.operations, "30.00", key="k")
    assert again == retry
    assert await ctx.ledger.balance(RECIPIENT) == (30_00, 0) and await ctx.ledger.balance(SENDER) == (70_00, 0)
    assert await conserved(ctx.ledger) == 0 and await ctx.ledger.open_transits() == []
    assert await outbox_types(ctx, RECIPIENT) == ["transfer_in"]


async def test_a_process_dying_after_the_credit_is_settled_by_recovery_and_the_retry_replays_it(ctx: Context) -> None:
    await stop_recovery(ctx)
    await deposit(ctx.ledger, SENDER, 100_00)
    die_once(ctx.ledger, "credited")
    with pytest.raises(Died):
        await transfer(ctx.operations, "30.00", key="k")
    assert await ctx.ledger.balance(RECIPIENT) == (30_00, 0)
    assert await conserved(ctx.ledger) == 0  # credited: no longer in transit, though not settled
    [(transit, _record)] = await ctx.ledger.open_transits()
    keys = ctx.ledger.keys
    marker = keys.credited(keys.partition_of(RECIPIENT), int(transit["id"]))
    assert await ctx.redis.ttl(marker) == -1  # however long the settle waits, a later credit finds the marker

    assert await TransitRecovery(ctx.ledger).run_once(min_age_ms=0) == 1
    assert await ctx.ledger.open_transits() == []
    assert 0 < await ctx.redis.ttl(marker) <= int(ctx.ledger.idempotency_ttl)  # settled: now it may expire
    retry = await transfer(ctx.operations, "30.00", key="k")
    assert isinstance(retry, Applied) and retry.replayed
    assert retry.body["recipient_balance"]["available"] == "3000"
    assert await ctx.ledger.balance(RECIPIENT) == (30_00, 0) and await ctx.ledger.balance(SENDER) == (70_00, 0)
    assert await outbox_types(ctx, RECIPIENT) == ["transfer_in"]


async def test_every_worker_runs_the_recovery_loop_which_completes_a_lost_transfer(ctx: Context) -> None:
    # The loop takes a transit MIN_AGE_MS old, looking every EVERY_SECONDS: well within the 5 s of docs/api.md.
    assert MIN_AGE_MS / 1000 + EVERY_SECONDS <= 2
    assert ctx.transit_recovery is not None
    await deposit(ctx.ledger, SENDER, 100_00)
    die_once(ctx.ledger, "debited")
    with pytest.raises(Died):
        await transfer(ctx.operations, "30.00")

    async def completed() -> None:
        while await ctx.ledger.open_transits():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(completed(), 30)  # a bound against hanging, far above the loop's 1.5 s
    assert ctx.transit_recovery.completed == 1
    assert await ctx.ledger.balance(RECIPIENT) == (30_00, 0)
    assert await conserved(ctx.ledger) == 0


async def test_concurrent_completions_credit_and_settle_each_transfer_exactly_once(ctx: Context) -> None:
    await stop_recovery(ctx)
    await deposit(ctx.ledger, SENDER, 1_000_00)
    keyed, unkeyed = [f"k{n}" for n in range(4)], 3
    for step, key in zip(["debited", "credited"] * 2, keyed, strict=True):
        die_once(ctx.ledger, step)
        with pytest.raises(Died):
            await transfer(ctx.operations, "10.00", key=key)
    for n in range(unkeyed):
        die_once(ctx.ledger, "debited" if n % 2 else "credited")
        with pytest.raises(Died):
            await transfer(ctx.operations, "1.00")
    ctx.ledger.between_transfer_steps = None
    transits = await ctx.ledger.open_transits()
    assert len(transits) == len(keyed) + unkeyed

    loops = [TransitRecovery(ctx.ledger).run_once(min_age_ms=0) for _ in range(3)]
    direct = [ctx.ledger.complete_transit(t, record) for t, record in transits for _ in range(2)]
    retries = [transfer(ctx.operations, "10.00", key=key) for key in keyed for _ in range(2)]
    results: list[Any] = await asyncio.gather(*loops, *direct, *retries)

    answers = results[len(loops) + len(direct) :]
    for first, second in zip(answers[::2], answers[1::2], strict=True):
        assert isinstance(first, Applied) and first == second
    assert await ctx.ledger.open_transits() == []
    assert await ctx.ledger.balance(RECIPIENT) == (4 * 10_00 + unkeyed * 1_00, 0)
    assert await ctx.ledger.balance(SENDER) == (1_000_00 - 4 * 10_00 - unkeyed * 1_00, 0)
    assert await outbox_types(ctx, RECIPIENT) == ["transfer_in"] * (len(keyed) + unkeyed)
    assert await conserved(ctx.ledger) == 0


async def test_a_credit_over_the_balance_limit_reverses_the_debit(ctx: Context) -> None:
    ledger = Ledger(
        ctx.redis, ctx.settings.redis_prefix + "small:", 3600, Limits(max_balance=100_00, max_amount=100_00)
    )
    operations = MoneyOperations(ledger)
    await deposit(ledger, SENDER, 50_00)
    await deposit(ledger, RECIPIENT, 90_00)
    refused = await transfer(operations, "20.00", key="over")
    assert refused == Refused("balance_limit_exceeded")
    assert await ledger.balance(SENDER) == (50_00, 0) and await ledger.balance(RECIPIENT) == (90_00, 0)
    assert await outbox_types(ctx_of(ctx, ledger), SENDER) == ["deposit", "transfer_out", "transfer_reversal"]
    assert await outbox_types(ctx_of(ctx, ledger), RECIPIENT) == ["deposit"]
    totals = await ledger.partition_totals(ledger.keys.partition_of(SENDER))
    assert totals["transfers_out"] == totals["transfers_reversed"] == 20_00
    assert await conserved(ledger) == 0 and await ledger.open_transits() == []
    assert await transfer(operations, "20.00", key="over") == Refused("balance_limit_exceeded", replayed=True)
    assert await ledger.balance(SENDER) == (50_00, 0)


def ctx_of(ctx: Context, ledger: Ledger) -> Any:
    class View:
        redis = ctx.redis

    view = View()
    view.ledger = ledger  # type: ignore[attr-defined]
    return view


async def test_the_reversal_shows_in_history_and_the_answer_is_409(api: Api, ctx: Context) -> None:
    assert (await api.deposit(SENDER, "50.00")).status == 201
    limits = Limits(max_balance=100_00, max_amount=100_00)
    small = Ledger(ctx.redis, ctx.settings.redis_prefix, ctx.settings.idempotency_ttl_seconds, limits)
    await small.load_scripts()
    ctx.operations.ledger = small  # the API's ledger, with a low balance limit
    await deposit(small, RECIPIENT, 90_00)
    body = {"from_user_id": SENDER, "to_user_id": RECIPIENT, "amount": "20.00"}
    problem(await api.post("/v1/transfers", body, token="tok-payments", key="x"), 409, "balance_limit_exceeded")
    assert (await api.balance(SENDER)).json["available"] == "50.00"
    await Projector.from_context(ctx).drain()
    r = await api.get(f"/v1/users/{SENDER}/transactions?type=transfer_reversal", token="tok-support")
    [item] = r.json["items"]
    assert item["amount"] == "20.00" and item["counterparty_user_id"] == RECIPIENT
    assert item["description"]  # described in the answer's language


async def test_a_batch_completes_a_transfer_between_partitions_before_what_follows(api: Api, ctx: Context) -> None:
    assert (await api.deposit(SENDER, "100.00")).status == 201
    ops = [
        {"op": "transfer", "from_user_id": SENDER, "to_user_id": RECIPIENT, "amount": "30.00"},
        {"op": "withdrawal", "user_id": RECIPIENT, "amount": "30.00"},
        {"op": "transfer", "from_user_id": RECIPIENT, "to_user_id": SENDER, "amount": "1.00"},
    ]
    r = await api.post("/v1/batch", {"operations": ops}, key="b")
    assert [item["status"] for item in r.json["results"]] == [201, 201, 409]
    assert r.json["results"][2]["body"]["code"] == "insufficient_funds"
    assert await ctx.ledger.open_transits() == []
    again = await api.post("/v1/batch", {"operations": ops}, key="b")
    assert [item["body"] for item in again.json["results"]] == [item["body"] for item in r.json["results"]]
    assert await conserved(ctx.ledger) == 0


async def test_reconcile_counts_money_in_transit_and_rebuild_restores_the_transit(ctx: Context) -> None:
    await stop_recovery(ctx)
    await deposit(ctx.ledger, SENDER, 100_00)
    die_once(ctx.ledger, "debited")
    with pytest.raises(Died):
        await transfer(ctx.operations, "30.00", key="k")
    ctx.ledger.between_transfer_steps = None
    store, projector = LedgerStore(ctx.mongo), Projector.from_context(ctx)
    report = await reconcile(ctx.redis, ctx.ledger.keys, store, projector, drain_timeout=10)
    assert report.ok and report.in_transit == 30_00, report.mismatches

    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)
    rebuilt = await rebuild(ctx.redis, ctx.ledger.keys, store)
    assert rebuilt.transits == 1
    assert await ctx.ledger.balance(SENDER) == (70_00, 0) and await ctx.ledger.balance(RECIPIENT) is None
    assert await TransitRecovery(ctx.ledger).run_once(min_age_ms=0) == 1
    assert await ctx.ledger.balance(RECIPIENT) == (30_00, 0)
    projector = Projector.from_context(ctx)  # its stream group went with the wiped Redis
    report = await reconcile(ctx.redis, ctx.ledger.keys, store, projector, drain_timeout=10)
    assert report.ok and report.in_transit == 0, report.mismatches


async def test_a_broken_recipient_account_keeps_the_money_in_transit_until_it_is_repaired(ctx: Context) -> None:
    await stop_recovery(ctx)
    await deposit(ctx.ledger, SENDER, 100_00)
    await ctx.redis.hset(ctx.ledger.keys.account(RECIPIENT), "available", "1.5")  # not a balance this ledger writes
    with pytest.raises(ResponseError, match="ledger:"):
        await transfer(ctx.operations, "30.00", key="k")
    assert await ctx.ledger.balance(SENDER) == (70_00, 0)
    [(transit, _record)] = await ctx.ledger.open_transits()
    with pytest.raises(ResponseError, match="ledger:"):
        await TransitRecovery(ctx.ledger).run_once(min_age_ms=0)
    await ctx.redis.hset(ctx.ledger.keys.account(RECIPIENT), "available", "0")  # repaired
    assert await TransitRecovery(ctx.ledger).run_once(min_age_ms=0) == 1
    assert await ctx.ledger.balance(RECIPIENT) == (30_00, 0)
    retry = await transfer(ctx.operations, "30.00", key="k")
    assert isinstance(retry, Applied) and retry.replayed and retry.body["transaction"]["id"] == transit["id"]
