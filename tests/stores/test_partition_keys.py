"""Idempotency records and the services catalog of the partitions on one Redis (billing/ledger/scripts.py
RedisKeys): a key reused for a user of another partition is still 422 and changes nothing, a retry replays
whatever the key's home, a record lives at its key's home, and the catalog every partition writes reads as one.
Under Redis Cluster (records in their users' partitions, pointers at the homes): tests/processes/test_cluster_mode.py."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.ledger.scripts import Idempotency
from tests.support.api import Api, problem

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})  # the outboxes stay as the scripts left them


def scope_of(ctx: Context, token: str) -> str:
    return ctx.auth.authenticate(f"Bearer {token}").name


def key_homed(ctx: Context, token: str, want: Any) -> str:
    """An Idempotency-Key of the token whose home partition satisfies want(home)."""
    scope = scope_of(ctx, token)
    for n in itertools.count():
        key = f"key-{n}"
        if want(ctx.ledger.keys.idempotency_home(Idempotency(scope, key))[0]):
            return key
    raise AssertionError("unreachable")


async def ledger_keys(ctx: Context) -> dict[str, bytes]:
    """Every key of the ledger with its type and content (streams by length): to see that nothing changed."""
    out: dict[str, Any] = {}
    async for raw in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        kind = (await ctx.redis.type(raw)).decode()
        if kind == "hash":
            out[raw.decode()] = await ctx.redis.hgetall(raw)
        elif kind == "stream":
            out[raw.decode()] = await ctx.redis.xlen(raw)
        elif kind == "string":
            out[raw.decode()] = (await ctx.redis.get(raw), await ctx.redis.ttl(raw) > 0)
    return out


def users_of_two_partitions(ctx: Context) -> tuple[int, int]:
    keys = ctx.ledger.keys
    a = 1
    b = next(u for u in itertools.count(2) if keys.partition_of(u) != keys.partition_of(a))
    return a, b


@pytest.mark.parametrize("home", ["first-user", "second-user", "elsewhere"])
async def test_a_key_reused_for_a_user_of_another_partition_is_422_and_changes_nothing(
    api: Api, ctx: Context, home: str
) -> None:
    a, b = users_of_two_partitions(ctx)
    pa, pb = ctx.ledger.keys.partition_of(a), ctx.ledger.keys.partition_of(b)
    wanted = {
        "first-user": lambda k: k == pa,
        "second-user": lambda k: k == pb,
        "elsewhere": lambda k: k not in (pa, pb),
    }
    key = key_homed(ctx, "tok-payments", wanted[home])
    assert (await api.deposit(a, "5.00", key=key)).status == 201
    before = await ledger_keys(ctx)
    problem(await api.deposit(b, "5.00", key=key), 422, "idempotency_key_reused")
    transfer = {"from_user_id": b, "to_user_id": a, "amount": "1.00"}
    problem(await api.post("/v1/transfers", transfer, token="tok-payments", key=key), 422, "idempotency_key_reused")
    assert await ledger_keys(ctx) == before
    assert (await api.balance(b)).status == 404


async def test_a_refusal_claims_the_key_for_every_partition_too(api: Api, ctx: Context) -> None:
    a, b = users_of_two_partitions(ctx)
    key = key_homed(ctx, "tok-payments", lambda k: k != ctx.ledger.keys.partition_of(a))
    withdrawal = {"user_id": a, "amount": "1.00"}
    problem(await api.post("/v1/withdrawals", withdrawal, token="tok-payments", key=key), 404, "account_not_found")
    problem(await api.deposit(b, "5.00", key=key), 422, "idempotency_key_reused")
    assert (await api.balance(b)).status == 404


async def test_a_retry_replays_whatever_the_keys_home(api: Api, ctx: Context) -> None:
    a, _ = users_of_two_partitions(ctx)
    key = key_homed(ctx, "tok-payments", lambda k: k != ctx.ledger.keys.partition_of(a))
    first = await api.deposit(a, "5.00", key=key)
    again = await api.deposit(a, "5.00", key=key)
    assert (first.status, again.status) == (201, 201)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.body == first.body
    assert (await api.balance(a)).json["available"] == "5.00"


async def test_on_one_redis_the_record_lives_at_its_keys_home_and_no_pointer_is_written(api: Api, ctx: Context) -> None:
    a, _ = users_of_two_partitions(ctx)
    keys = ctx.ledger.keys
    key = key_homed(ctx, "tok-payments", lambda k: k != keys.partition_of(a))
    idem = Idempotency(scope_of(ctx, "tok-payments"), key)
    record, pointer = keys.idempotency_record(idem, keys.partition_of(a))
    assert pointer is None and record == keys.idempotency(idem)
    assert record.startswith(keys.tag(keys.idempotency_home(idem)[0]))
    before = set(await ctx.redis.keys("*"))
    assert (await api.deposit(a, "5.00", key=key)).status == 201
    written = {k.decode() for k in set(await ctx.redis.keys("*")) - before}
    assert record in written
    # nothing of the key in the user's partition: the one key the script wrote outside it is the record
    assert not [k for k in written if k.endswith(record.split(":", 1)[1]) and k != record]
    assert [k for k in written if not k.startswith(keys.tag(keys.partition_of(a)))] == [record]
    ttl = ctx.settings.idempotency_ttl_seconds
    assert ttl - 5 <= await ctx.redis.ttl(record) <= ttl


async def test_a_reused_key_in_a_batch_is_reused_across_partitions(api: Api, ctx: Context) -> None:
    a, b = users_of_two_partitions(ctx)
    key = key_homed(ctx, "tok-admin", lambda k: True)
    ops = [
        {"op": "deposit", "user_id": a, "amount": "1.00", "idempotency_key": key},
        {"op": "deposit", "user_id": b, "amount": "1.00", "idempotency_key": key},
    ]
    r = await api.post("/v1/batch", {"operations": ops})
    assert [item["status"] for item in r.json["results"]] == [201, 422]
    assert (await api.balance(b)).status == 404


async def test_the_catalog_reads_as_one_whatever_partition_named_a_service(api: Api, ctx: Context) -> None:
    a, b = users_of_two_partitions(ctx)
    orders = {"token": "tok-orders"}
    assert (await api.put("/v1/services/7", {"name": "Первое"}, **orders)).status == 200
    for user in (a, b):
        assert (await api.deposit(user, "10.00")).status == 201
    reserve = {"user_id": b, "service_id": 7, "order_id": 1, "amount": "1.00", "service_name": "Второе"}
    assert (await api.post("/v1/reservations", reserve, **orders)).status == 201
    assert (await api.get("/v1/services")).json["items"] == [{"service_id": 7, "name": "Второе"}]
    # a user of another partition: its reservation shows the catalog's current name
    reserve = {"user_id": a, "service_id": 7, "order_id": 2, "amount": "1.00", "service_name": "Третье"}
    r = await api.post("/v1/reservations", reserve, **orders)
    assert r.json["transaction"]["service_name"] == "Третье"
    assert (await api.get("/v1/services")).json["items"] == [{"service_id": 7, "name": "Третье"}]
    assert (await api.put("/v1/services/7", {"name": "Четвёртое"}, **orders)).status == 200
    recognize = {"user_id": b, "service_id": 7, "order_id": 1, "amount": "1.00"}
    r = await api.post("/v1/reservations/recognize", recognize, **orders)
    assert r.json["transaction"]["service_name"] == "Четвёртое"
    assert (await api.get("/v1/services")).json["items"] == [{"service_id": 7, "name": "Четвёртое"}]
    for p in ctx.ledger.keys.all():  # every partition's copy holds the name set for all
        assert await ctx.redis.hget(ctx.ledger.keys.services(p), "7") == "Четвёртое".encode()
