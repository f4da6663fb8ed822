"""A batch's own Idempotency-Key: what it fingerprints, when it is kept, and a batch still running with it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from billing.bootstrap import Context
from billing.infra import redis_raw
from billing.ledger.scripts import BATCH_CLAIM_TTL_SECONDS, Idempotency, batch_scope
from tests.support.api import Api, Response, problem

# Also on `billing serve --workers 2` over a Redis Cluster (tests/support/cluster_service.py).
pytestmark = pytest.mark.cluster_server

REPLAYED = "Idempotent-Replayed"


def statuses(response: Response) -> list[int]:
    assert response.status == 200, response.body
    return [item["status"] for item in response.json["results"]]


def batch_record(ctx: Context, key: str, token: str = "tok-admin") -> str:
    scope = ctx.auth.authenticate(f"Bearer {token}").name
    return ctx.ledger.keys.idempotency(batch_scope(Idempotency(scope=scope, key=key)))


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def deposit_with(field: str, value: str) -> str:
    return '{"op": "deposit", "user_id": 1, "amount": "1.00", "' + field + '": ' + value + "}"


DEEP_OPERATIONS = {
    "comment-list": deposit_with("comment", nested(1000)),
    "unknown-field-list": deposit_with("note", nested(1000)),
    "unknown-field-objects": deposit_with("note", nested_objects(1000)),
    "near-the-parser-limit": deposit_with("note", nested(1019)),
    "op-nested": '{"op": ' + nested_objects(1000) + ', "user_id": 1, "amount": "1.00"}',
    "key-nested": deposit_with("idempotency_key", nested(1000)),
}


@pytest.mark.parametrize("key", [None, "deep"], ids=["no-key", "batch-key"])
@pytest.mark.parametrize("operation", DEEP_OPERATIONS.values(), ids=DEEP_OPERATIONS.keys())
async def test_deeply_nested_operation_is_its_own_400_never_a_5xx(api: Api, key: str | None, operation: str) -> None:
    body = ('{"operations": [' + operation + ', {"op": "deposit", "user_id": 2, "amount": "1.00"}]}').encode()
    r = await api.request("POST", "/v1/batch", body=body, key=key)
    assert statuses(r) == [400, 201]
    assert r.json["results"][0]["body"]["code"] == "validation_error"
    assert (await api.balance(1)).status == 404
    again = await api.request("POST", "/v1/batch", body=body, key=key)
    assert statuses(again) == [400, 201]
    assert (await api.balance(2)).json["available"] == ("1.00" if key else "2.00")


@pytest.mark.parametrize("depth", [1000, 5000])
async def test_deeply_nested_envelope_is_a_400(api: Api, depth: int) -> None:
    for body in (f'{{"operations": {nested(depth)}}}', f'{{"operations": [{nested(depth)}]}}'):
        r = await api.request("POST", "/v1/batch", body=body.encode(), key="deep-envelope")
        assert r.status == 400, r.body
        assert r.json["code"] in ("validation_error", "invalid_json")


async def test_batch_written_another_way_is_the_same_batch(api: Api) -> None:
    first = await api.post("/v1/batch", {"operations": [{"op": "deposit", "user_id": 3, "amount": "1"}]}, key="w")
    again = await api.post("/v1/batch", {"operations": [{"amount": "1.00", "user_id": 3.0, "op": "deposit"}]}, key="w")
    assert statuses(first) == statuses(again) == [201]
    assert again.headers.get(REPLAYED) == "true" and again.body == first.body
    other = await api.post("/v1/batch", {"operations": [{"op": "deposit", "user_id": 3, "amount": "2"}]}, key="w")
    problem(other, 422, "idempotency_key_reused")
    assert (await api.balance(3)).json["available"] == "1.00"


async def test_batch_where_no_operation_reached_the_money_keeps_no_record(api: Api, ctx: Context) -> None:
    refused = [
        {"op": "deposit", "user_id": 0, "amount": "1.00"},  # 400
        {"op": "nope"},  # 400
        {"op": "reserve", "user_id": 4, "service_id": 1, "order_id": 1, "amount": "1.00"},  # 403 for payments
    ]
    r = await api.post("/v1/batch", {"operations": refused}, token="tok-payments", key="nothing-ran")
    assert statuses(r) == [400, 400, 403]
    assert await ctx.redis.exists(batch_record(ctx, "nothing-ran", "tok-payments")) == 0
    other = await api.post(
        "/v1/batch",
        {"operations": [{"op": "deposit", "user_id": 4, "amount": "5.00"}]},
        token="tok-payments",
        key="nothing-ran",
    )
    assert statuses(other) == [201] and REPLAYED not in other.headers
    assert (await api.balance(4)).json["available"] == "5.00"


@pytest.mark.in_process  # redis_raw.pipeline replaced in this process
async def test_batch_refused_with_503_keeps_no_record(api: Api, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pipeline = redis_raw.pipeline

    async def unreachable(*args: Any) -> Any:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(redis_raw, "pipeline", unreachable)
    ops = {"operations": [{"op": "deposit", "user_id": 5, "amount": "1.00"}]}
    problem(await api.post("/v1/batch", ops, key="down"), 503, "unavailable")
    assert await ctx.redis.exists(batch_record(ctx, "down")) == 0
    monkeypatch.setattr(redis_raw, "pipeline", real_pipeline)
    other = await api.post("/v1/batch", {"operations": [{"op": "deposit", "user_id": 5, "amount": "7.00"}]}, key="down")
    assert statuses(other) == [201] and REPLAYED not in other.headers
    assert (await api.balance(5)).json["available"] == "7.00"


async def test_batch_that_partly_ran_keeps_its_fingerprint(api: Api, ctx: Context) -> None:
    ops = [{"op": "deposit", "user_id": 0, "amount": "1.00"}, {"op": "deposit", "user_id": 6, "amount": "1.00"}]
    first = await api.post("/v1/batch", {"operations": ops}, key="partly")
    assert statuses(first) == [400, 201]
    problem(await api.post("/v1/batch", {"operations": ops[1:]}, key="partly"), 422, "idempotency_key_reused")
    again = await api.post("/v1/batch", {"operations": ops}, key="partly")
    assert again.headers.get(REPLAYED) == "true" and again.body == first.body
    assert (await api.balance(6)).json["available"] == "1.00"
    ttl = await ctx.redis.ttl(batch_record(ctx, "partly"))
    assert ttl >= 24 * 3600, ttl


@pytest.mark.in_process  # ctx.ledger.complete_batch_key replaced in this process
async def test_batch_that_ran_answers_its_results_even_if_its_key_cannot_be_marked_done(
    api: Api, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*args: Any) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(ctx.ledger, "complete_batch_key", unreachable)
    ops = {"operations": [{"op": "deposit", "user_id": 9, "amount": "1.00"}]}
    r = await api.post("/v1/batch", ops, key="unmarked")
    assert statuses(r) == [201]
    assert 0 < await ctx.redis.ttl(batch_record(ctx, "unmarked")) <= BATCH_CLAIM_TTL_SECONDS  # runs out by itself
    assert (await api.balance(9)).json["available"] == "1.00"


class Gate:
    """Holds the first batch run after it claimed its key, before (or, then_hang: after) its operations run,
    until released; later batches pass straight through."""

    def __init__(self, ctx: Context, monkeypatch: pytest.MonkeyPatch, then_hang: bool = False) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        real: Callable[..., Awaitable[Any]] = ctx.operations.execute_many

        async def held(*args: Any) -> Any:
            if self.entered.is_set():
                return await real(*args)
            if then_hang:  # the operations run, then the worker gets no further (as if it had died)
                replies = await real(*args)
                self.entered.set()
                await self.release.wait()
                return replies
            self.entered.set()
            await self.release.wait()
            return await real(*args)

        monkeypatch.setattr(ctx.operations, "execute_many", held)


@pytest.mark.in_process  # ctx.operations.execute_many held in this process
async def test_concurrent_batches_with_one_key_the_second_is_409_in_use(
    api: Api, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = {"operations": [{"op": "deposit", "user_id": 7, "amount": "1.00"}]}
    gate = Gate(ctx, monkeypatch)
    first = asyncio.ensure_future(api.post("/v1/batch", ops, key="busy"))
    await gate.entered.wait()
    for body in (ops, {"operations": [{"op": "deposit", "user_id": 7, "amount": "2.00"}]}):
        busy = await api.post("/v1/batch", body, key="busy")
        problem(busy, 409, "idempotency_key_in_use")
        assert busy.headers.get("Retry-After") == "1"
    assert (await api.balance(7)).status == 404
    gate.release.set()
    done = await first
    assert statuses(done) == [201] and REPLAYED not in done.headers
    again = await api.post("/v1/batch", ops, key="busy")
    assert again.headers.get(REPLAYED) == "true" and again.body == done.body
    assert (await api.balance(7)).json["available"] == "1.00"


@pytest.mark.in_process  # ctx.operations.execute_many held in this process
async def test_worker_dying_mid_batch_blocks_the_key_only_briefly_and_a_retry_applies_nothing_twice(
    api: Api, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = {
        "operations": [
            {"op": "deposit", "user_id": 8, "amount": "3.00"},
            {"op": "withdrawal", "user_id": 8, "amount": "1.00"},
        ]
    }
    gate = Gate(ctx, monkeypatch, then_hang=True)
    stuck = asyncio.ensure_future(api.post("/v1/batch", ops, key="crash"))
    await gate.entered.wait()
    record = batch_record(ctx, "crash")
    assert (await api.balance(8)).json["available"] == "2.00"
    problem(await api.post("/v1/batch", ops, key="crash"), 409, "idempotency_key_in_use")
    assert 0 < await ctx.redis.ttl(record) <= BATCH_CLAIM_TTL_SECONDS
    # The claim runs out (made to run out now rather than waiting for it).
    await ctx.redis.pexpire(record, 1)
    while await ctx.redis.exists(record):
        await asyncio.sleep(0.01)
    monkeypatch.undo()
    retry = await api.post("/v1/batch", ops, key="crash")
    assert statuses(retry) == [201, 201] and retry.headers.get(REPLAYED) == "true"
    assert (await api.balance(8)).json["available"] == "2.00"
    other = await api.post(
        "/v1/batch", {"operations": [{"op": "deposit", "user_id": 8, "amount": "9.00"}]}, key="crash"
    )
    problem(other, 422, "idempotency_key_reused")
    # The stuck worker wakes up late: it answers, and leaves the record the retry wrote alone.
    gate.release.set()
    late = await stuck
    assert statuses(late) == [201, 201]
    again = await api.post("/v1/batch", ops, key="crash")
    assert again.headers.get(REPLAYED) == "true" and again.body == retry.body
    assert (await api.balance(8)).json["available"] == "2.00"
