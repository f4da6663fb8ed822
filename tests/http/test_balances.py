"""GET /v1/balances: many balances in one request, on fakeredis and on a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest

from billing.api.handlers.accounts import MAX_BALANCE_IDS
from billing.bootstrap import Context
from billing.infra import redis_raw
from tests.support.api import Api, problem


async def balances(api: Api, query: str, token: str | None = "tok-support") -> Any:
    return await api.get(f"/v1/balances?{query}", token=token)


async def test_items_come_in_the_order_asked_with_unknown_accounts_as_items(api: Api) -> None:
    await api.deposit(1, "70.00")
    await api.deposit(3, "0.05")
    r = await balances(api, "user_ids=3,2,1,3")
    assert r.status == 200, r.body
    assert r.json == {
        "items": [
            {"user_id": 3, "available": "0.05", "reserved": "0.00"},
            {"user_id": 2, "error": "account_not_found"},
            {"user_id": 1, "available": "70.00", "reserved": "0.00"},
            {"user_id": 3, "available": "0.05", "reserved": "0.00"},
        ]
    }


async def test_reserved_money_shows_as_in_the_single_read(api: Api) -> None:
    await api.deposit(5, "10.00")
    r = await api.post(
        "/v1/reservations", {"user_id": 5, "service_id": 1, "order_id": 1, "amount": "4.00"}, token="tok-orders"
    )
    assert r.status == 201, r.body
    single = (await api.balance(5)).json
    assert (await balances(api, "user_ids=5")).json == {"items": [single]}
    assert single == {"user_id": 5, "available": "6.00", "reserved": "4.00"}


async def test_up_to_the_limit_in_one_request(api: Api) -> None:
    await api.deposit(MAX_BALANCE_IDS, "1.00")
    ids = ",".join(str(i) for i in range(1, MAX_BALANCE_IDS + 1))
    r = await balances(api, f"user_ids={ids}")
    assert r.status == 200
    items = r.json["items"]
    assert [item["user_id"] for item in items] == list(range(1, MAX_BALANCE_IDS + 1))
    assert items[-1] == {"user_id": MAX_BALANCE_IDS, "available": "1.00", "reserved": "0.00"}
    assert all(item == {"user_id": item["user_id"], "error": "account_not_found"} for item in items[:-1])
    problem(await balances(api, f"user_ids={ids},1"), 400, "validation_error")


async def test_an_integral_id_reads_as_in_a_path(api: Api) -> None:
    await api.deposit(42, "1.00")
    r = await balances(api, "user_ids=42.0")
    assert r.json["items"] == [{"user_id": 42, "available": "1.00", "reserved": "0.00"}]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "user_ids=",
        "user_ids=1,,2",
        "user_ids=1,",
        "user_ids=1,%202",
        "user_ids=0",
        "user_ids=-1",
        "user_ids=1,x",
        "user_ids=%EF%BC%91",  # full-width one
        "user_ids=9223372036854775808",
        "user_ids=1%0A",
        "user_ids=1&user_ids=2",
        "user_ids=" + "1," * 3000 + "1",
    ],
)
async def test_anything_but_a_list_of_ids_is_refused_naming_the_field(api: Api, query: str) -> None:
    await api.deposit(1, "1.00")
    r = await balances(api, query)
    problem(r, 400, "validation_error")
    assert r.json["errors"][0]["field"] == "user_ids"


async def test_the_refusal_names_the_position_of_the_bad_id(api: Api) -> None:
    r = await balances(api, "user_ids=1,2,abc")
    problem(r, 400, "validation_error")
    assert "id 3 " in r.json["errors"][0]["message"]


@pytest.mark.parametrize("token", ["tok-payments", "tok-orders", "tok-support", "tok-accounting", "tok-admin"])
async def test_every_role_that_reads_a_balance_reads_many(api: Api, token: str) -> None:
    await api.deposit(1, "1.00")
    assert (await balances(api, "user_ids=1", token=token)).status == 200
    problem(await balances(api, "user_ids=1", token=None), 401, "unauthenticated")


async def test_one_redis_round_trip_for_all_ids(api: Api, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    await api.deposit(1, "1.00")
    sent: list[int] = []
    real = redis_raw.pipeline

    async def counting(redis: Any, commands: Any) -> list[Any]:
        sent.append(len(commands))
        return await real(redis, commands)

    monkeypatch.setattr(redis_raw, "pipeline", counting)
    r = await balances(api, "user_ids=" + ",".join(str(i) for i in range(1, 51)))
    assert r.status == 200
    assert sent == [50]
