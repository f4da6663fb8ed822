"""The ledger partitioned on one Redis: ids name their partition and keep each user's order, a transfer
between partitions keeps every partition's conservation and projects both sides, a batch's answers keep the
request's order, and a Redis laid out for another partition count is refused."""

from __future__ import annotations

from typing import Any

import pytest

from billing.bootstrap import Context, bootstrap
from billing.core.config import MAX_PARTITIONS, Settings
from billing.core.errors import ApiError
from billing.ledger.scripts import PartitionCountChanged
from billing.projection.seq_guard import SequenceGuard
from billing.projection.store import LedgerStore
from tests.support.api import Api

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)


def ids_of(r: Any, *names: str) -> list[int]:
    return [int(r.json[name]["id"]) for name in names]


async def test_ids_name_the_users_partition_and_grow_with_their_operations(api: Api, ctx: Context) -> None:
    keys = ctx.ledger.keys
    assert keys.partition_of(1) != keys.partition_of(2)
    seen: dict[int, list[int]] = {1: [], 2: []}
    for n in range(3):
        for user in (1, 2):
            r = await api.deposit(user, f"{n + 1}.00")
            assert r.status == 201
            seen[user] += ids_of(r, "transaction")
    for user, ids in seen.items():
        partition = keys.partition_of(user)
        assert ids == [seq * MAX_PARTITIONS + partition for seq in (1, 2, 3)]  # its partition's sequence
        assert [txn_id % MAX_PARTITIONS for txn_id in ids] == [partition] * 3


async def partition_totals(ctx: Context) -> dict[int, dict[str, int]]:
    return {p: await ctx.ledger.partition_totals(p) for p in ctx.ledger.keys.all()}


async def test_a_transfer_between_partitions_keeps_each_partition_whole(api: Api, ctx: Context) -> None:
    keys = ctx.ledger.keys
    sender, recipient = 1, 2
    p, q = keys.partition_of(sender), keys.partition_of(recipient)
    assert p != q
    assert (await api.deposit(sender, "100.00")).status == 201
    r = await api.post(
        "/v1/transfers", {"from_user_id": sender, "to_user_id": recipient, "amount": "30.00"}, token="tok-payments"
    )
    assert r.status == 201
    out_id, in_id = ids_of(r, "transaction", "recipient_transaction")
    assert (out_id % MAX_PARTITIONS, in_id % MAX_PARTITIONS) == (p, q)
    totals = await partition_totals(ctx)
    assert totals[p] == {"deposited": 100_00, "transfers_out": 30_00}
    assert totals[q] == {"transfers_in": 30_00}
    assert await ctx.ledger.balance(sender) == (70_00, 0) and await ctx.ledger.balance(recipient) == (30_00, 0)
    # each side went to its own partition's outbox (counted as added: the projector may have trimmed them
    # already) and is projected into its user's history
    added = [(await ctx.redis.xinfo_stream(keys.outbox(partition)))["entries-added"] for partition in (p, q)]
    assert added == [2, 1]
    await ctx.projector.drain()
    for user, txn_id, kind in ((sender, out_id, "transfer_out"), (recipient, in_id, "transfer_in")):
        page = await api.get(f"/v1/users/{user}/transactions", token="tok-support")
        assert page.status == 200
        assert (page.json["items"][0]["id"], page.json["items"][0]["type"]) == (txn_id, kind)


async def test_a_batch_over_partitions_answers_in_the_requests_order(api: Api, ctx: Context) -> None:
    users = [1, 2, 3, 4, 1, 2, 3, 4]
    operations = [{"op": "deposit", "user_id": user, "amount": f"{n}.00"} for n, user in enumerate(users, 1)] + [
        {"op": "transfer", "from_user_id": 4, "to_user_id": 1, "amount": "1.00"}
    ]
    r = await api.post("/v1/batch", {"operations": operations}, token="tok-admin")
    assert r.status == 200, r.body
    results = r.json["results"]
    assert [item["status"] for item in results] == [201] * len(operations)
    assert [item["body"]["balance"]["user_id"] for item in results] == [*users, 4]
    assert [item["body"]["transaction"]["amount"] for item in results[:-1]] == [f"{n}.00" for n in range(1, 9)]
    # each user's two deposits in their order, with their partition's ids
    for user in (1, 2, 3, 4):
        ids = [int(item["body"]["transaction"]["id"]) for item, u in zip(results, users, strict=False) if u == user]
        assert ids == sorted(ids) and {i % MAX_PARTITIONS for i in ids} == {ctx.ledger.keys.partition_of(user)}
    assert (await api.balance(1)).json["available"] == "7.00"  # 1 + 5 + the transfer's 1
    assert (await api.balance(4)).json["available"] == "11.00"  # 4 + 8 - 1


async def test_a_redis_laid_out_for_another_partition_count_is_refused(
    ctx: Context, settings: Settings, mongo_db: Any
) -> None:
    other = await bootstrap(settings.model_copy(update={"partitions": 8}), redis=ctx.redis, mongo=mongo_db)
    with pytest.raises(PartitionCountChanged) as refused:
        await other.start()
    await other.stop()
    message = str(refused.value)
    assert "BILLING_PARTITIONS is 8" in message and "ledger of 16 partitions" in message and "\n" not in message
    same = await bootstrap(settings, redis=ctx.redis, mongo=mongo_db)  # the stored count starts as before
    await same.start()
    await same.stop()


async def test_money_writes_wait_until_the_partition_count_is_confirmed(ctx: Context) -> None:
    """A Redis down at start is asked again on every tick; another count there refuses money writes."""
    answers: list[Exception | None] = [
        ConnectionError("Redis down"),
        PartitionCountChanged("BILLING_PARTITIONS is 16 but this Redis holds a ledger of 8 partitions"),
        None,
    ]

    async def claim() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    guard = SequenceGuard(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), claim)
    with pytest.raises(ConnectionError):
        await guard.check()
    with pytest.raises(ApiError, match="not confirmed"):
        guard.ensure_writable()
    assert (await guard.readiness())["ledger_sequence"] != "ok"
    refusal = await guard.tick()
    assert refusal is not None and "ledger of 8 partitions" in refusal
    with pytest.raises(ApiError, match="ledger of 8 partitions"):
        guard.ensure_writable()
    assert await guard.tick() is None  # confirmed: writes go on
    guard.ensure_writable()
    assert (await guard.readiness())["ledger_sequence"] == "ok"
