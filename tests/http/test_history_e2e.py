"""History end to end: money operations over HTTP -> outbox -> projector -> GET /v1/users/{id}/transactions."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest

from billing.bootstrap import Context
from tests.support.api import Api

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True),
    # Also on `billing serve --workers 2` over a Redis Cluster (tests/support/cluster_service.py).
    pytest.mark.cluster_server,
]


async def history(api: Api, user_id: int, headers: dict[str, str] | None = None, **params: str) -> Any:
    query = f"?{urlencode(params)}" if params else ""
    r = await api.get(f"/v1/users/{user_id}/transactions{query}", token="tok-support", headers=headers)
    assert r.status == 200, r.body
    return r.json


async def ok(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status == status, response.body
    return response.json


async def test_history_shows_exactly_what_the_operations_answered(api: Api, ctx: Context) -> None:
    pay, orders = {"token": "tok-payments"}, {"token": "tok-orders"}
    answered: list[dict[str, Any]] = []
    body = await ok(await api.post("/v1/deposits", {"user_id": 1, "amount": "100.50", "comment": "Top-up"}, **pay))
    answered.append(body["transaction"])
    body = await ok(await api.post("/v1/withdrawals", {"user_id": 1, "amount": "0.50"}, **pay))
    answered.append(body["transaction"])
    body = await ok(await api.post("/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "10"}, **pay))
    answered.append(body["transaction"])
    incoming = body["recipient_transaction"]
    await ok(await api.put("/v1/services/7", {"name": "Продвижение"}, **orders), 200)
    reservation = {"user_id": 1, "service_id": 7, "order_id": 42}
    body = await ok(await api.post("/v1/reservations", {**reservation, "amount": "30.00"}, **orders))
    answered.append(body["transaction"])
    body = await ok(await api.post("/v1/reservations/recognize", {**reservation, "amount": "25.00"}, **orders), 200)
    answered += [body["transaction"], body["release_transaction"]]
    other = {"user_id": 1, "service_id": 8, "order_id": 43}
    body = await ok(await api.post("/v1/reservations", {**other, "amount": "5", "service_name": "Баннер"}, **orders))
    answered.append(body["transaction"])
    body = await ok(await api.post("/v1/reservations/cancel", other, **orders), 200)
    answered.append(body["transaction"])

    await ctx.projector.drain()
    page = await history(api, 1, order="asc", limit="100")
    assert page["next_cursor"] is None
    # the same records, rendered the same way; history adds each one's link in the user's hash chain
    assert [{k: v for k, v in item.items() if k != "hash"} for item in page["items"]] == answered
    assert all(re.fullmatch("[0-9a-f]{64}", item["hash"]) for item in page["items"])
    assert [item["type"] for item in page["items"]] == [
        "deposit",
        "withdrawal",
        "transfer_out",
        "reserve",
        "charge",
        "release",
        "reserve",
        "release",
    ]
    assert page["items"][4]["description"] == "Списание 25.00 ₽ за услугу «Продвижение», заказ 42"
    assert page["items"][7]["description"] == "Возврат 5.00 ₽ из резерва: услуга «Баннер», заказ 43"
    assert [{k: v for k, v in item.items() if k != "hash"} for item in (await history(api, 2))["items"]] == [incoming]
    assert incoming["description"] == "Перевод 10.00 ₽ от пользователя 1"
    english = await history(api, 1, headers={"Accept-Language": "en"}, type="transfer_out,charge")
    assert [item["description"] for item in english["items"]] == [
        "Charge of 25.00 RUB for service “Продвижение”, order 42",
        "Transfer of 10.00 RUB to user 2",
    ]

    # A rename reaches every earlier history item once projected.
    await ok(await api.put("/v1/services/7", {"name": "Реклама"}, **orders), 200)
    await ctx.projector.drain()
    charge = (await history(api, 1, type="charge"))["items"][0]
    assert charge["service_name"] == "Реклама" and "«Реклама»" in charge["description"]


async def test_paging_while_deposits_arrive(api: Api, ctx: Context) -> None:
    for i in range(1, 24):
        await ok(await api.deposit(5, f"{i % 4 + 1}.00"))
    await ctx.projector.drain()
    first_walk: list[int] = []
    cursor = None
    while True:
        params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        page = await history(api, 5, **params)
        first_walk += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        await ok(await api.deposit(5, "7.00"))  # newer than everything on the first page
        await ctx.projector.drain()
    assert len(first_walk) == 23 == len(set(first_walk))
    assert first_walk == sorted(first_walk, reverse=True)
    newest = await history(api, 5, limit="100", sort="amount", order="asc")
    amounts = [item["amount"] for item in newest["items"]]
    assert len(amounts) == 23 + 4 and amounts == sorted(amounts, key=lambda text: int(text.replace(".", "")))


async def test_no_history_for_an_account_that_does_not_exist(api: Api, ctx: Context) -> None:
    await ok(await api.deposit(1, "1.00"))
    await ctx.projector.drain()
    r = await api.get("/v1/users/2/transactions", token="tok-support")
    assert r.status == 404 and r.json["code"] == "account_not_found"
