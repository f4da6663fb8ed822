"""POST /v1/refunds over real HTTP, on fakeredis and on a real redis-server: every rule of a refund, its batch
op, its history item, and how statements and the revenue report count it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.bootstrap import Context
from billing.core.money import MAX_BALANCE_KOPECKS
from billing.views.accounting import movement, revenue_kopecks
from tests.support.api import Api, Response, problem

ORDERS = {"token": "tok-orders"}


def kop(text: str) -> int:
    negative = text.startswith("-")
    rubles, kopecks = text.lstrip("-").split(".")
    value = int(rubles) * 100 + int(kopecks)
    return -value if negative else value


async def charged(
    api: Api, user_id: int, order_id: int, reserve: str, charge: str, service_id: int = 7, name: str = "Продвижение"
) -> dict[str, Any]:
    """A reservation recognized for `charge` of `reserve` (after a deposit that pays for it)."""
    ref = {"user_id": user_id, "service_id": service_id, "order_id": order_id}
    assert (await api.deposit(user_id, reserve)).status == 201
    r = await api.post("/v1/reservations", {**ref, "amount": reserve, "service_name": name}, **ORDERS)
    assert r.status == 201, r.body
    r = await api.post("/v1/reservations/recognize", {**ref, "amount": charge}, **ORDERS)
    assert r.status == 200, r.body
    return ref


async def refund(api: Api, ref: dict[str, Any], amount: str, comment: str | None = None, **kwargs: Any) -> Response:
    body = {**ref, "amount": amount} if comment is None else {**ref, "amount": amount, "comment": comment}
    return await api.post("/v1/refunds", body, **{**ORDERS, **kwargs})


async def lookup(api: Api, ref: dict[str, Any]) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in ref.items())
    r = await api.get(f"/v1/reservations?{query}", token="tok-support")
    assert r.status == 200, r.body
    return r.json


async def test_partial_refunds_until_the_charge_is_used_up(api: Api) -> None:
    ref = await charged(api, 1, 42, "100.00", "80.00")  # 20.00 released: available 20.00
    r = await refund(api, ref, "30.00", comment="damaged")
    assert r.status == 201, r.body
    assert set(r.json) == {"reservation", "balance", "transaction"}
    assert r.json["balance"] == {"user_id": 1, "available": "50.00", "reserved": "0.00"}
    reservation = r.json["reservation"]
    assert (reservation["status"], reservation["recognized_amount"], reservation["refunded_amount"]) == (
        "recognized",
        "80.00",
        "30.00",
    )
    txn = r.json["transaction"]
    assert (txn["type"], txn["amount"], txn["comment"]) == ("refund", "30.00", "damaged")
    assert (txn["available_after"], txn["reserved_after"]) == ("50.00", "0.00")
    assert (txn["service_id"], txn["order_id"], txn["service_name"]) == (7, 42, "Продвижение")
    assert txn["description"] == "Возврат 30.00 ₽ за услугу «Продвижение», заказ 42"
    assert reservation["updated_at"] == txn["created_at"]
    # another partial refund, up to exactly the recognized amount
    r = await refund(api, ref, "50")
    assert r.status == 201 and r.json["reservation"]["refunded_amount"] == "80.00"
    assert r.json["balance"]["available"] == "100.00"
    # one kopeck more than the charge: refused, nothing changes
    problem(await refund(api, ref, "0.01"), 409, "refund_exceeds_charge")
    assert (await api.balance(1)).json == {"user_id": 1, "available": "100.00", "reserved": "0.00"}
    assert (await lookup(api, ref))["refunded_amount"] == "80.00"


async def test_a_refund_over_what_is_left_is_refused_whole(api: Api) -> None:
    ref = await charged(api, 2, 1, "10.00", "10.00")
    assert (await refund(api, ref, "4.00")).status == 201
    problem(await refund(api, ref, "6.01"), 409, "refund_exceeds_charge")  # 4.00 + 6.01 > 10.00
    problem(await refund(api, ref, "10.00"), 409, "refund_exceeds_charge")
    assert (await lookup(api, ref))["refunded_amount"] == "4.00"
    assert (await api.balance(2)).json["available"] == "4.00"
    assert (await refund(api, ref, "6.00")).status == 201


async def test_refunded_amount_is_zero_until_a_refund_everywhere_a_reservation_shows(api: Api) -> None:
    ref = {"user_id": 3, "service_id": 1, "order_id": 1}
    await api.deposit(3, "10.00")
    r = await api.post("/v1/reservations", {**ref, "amount": "4"}, **ORDERS)
    assert r.json["reservation"]["refunded_amount"] == "0.00"
    assert (await lookup(api, ref))["refunded_amount"] == "0.00"
    again = await api.post("/v1/reservations", {**ref, "amount": "4"}, **ORDERS)
    assert again.status == 200 and again.json["reservation"]["refunded_amount"] == "0.00"
    r = await api.post("/v1/reservations/recognize", {**ref, "amount": "3"}, **ORDERS)
    assert r.json["reservation"]["refunded_amount"] == "0.00"
    assert (await refund(api, ref, "1")).status == 201
    # the repeats of reserve and recognize answer the reservation as it is now
    same = await api.post("/v1/reservations/recognize", {**ref, "amount": "3"}, **ORDERS)
    assert same.status == 200 and same.json["reservation"]["refunded_amount"] == "1.00"
    assert "transaction" not in same.json
    again = await api.post("/v1/reservations", {**ref, "amount": "4"}, **ORDERS)
    assert again.status == 200 and again.json["reservation"]["refunded_amount"] == "1.00"
    cancelled = {"user_id": 3, "service_id": 1, "order_id": 2}
    await api.post("/v1/reservations", {**cancelled, "amount": "1"}, **ORDERS)
    r = await api.post("/v1/reservations/cancel", cancelled, **ORDERS)
    assert r.json["reservation"]["refunded_amount"] == "0.00"


async def test_only_a_recognized_reservation_is_refunded(api: Api) -> None:
    ref = {"user_id": 4, "service_id": 2, "order_id": 9}
    problem(await refund(api, ref, "1.00"), 404, "reservation_not_found")  # no account either
    await api.deposit(4, "10.00")
    problem(await refund(api, ref, "1.00"), 404, "reservation_not_found")
    await api.post("/v1/reservations", {**ref, "amount": "5"}, **ORDERS)
    problem(await refund(api, ref, "1.00"), 409, "reservation_not_recognized")
    await api.post("/v1/reservations/cancel", ref, **ORDERS)
    problem(await refund(api, ref, "1.00"), 409, "reservation_not_recognized")
    assert (await api.balance(4)).json == {"user_id": 4, "available": "10.00", "reserved": "0.00"}
    assert (await lookup(api, ref))["refunded_amount"] == "0.00"
    # the checks' order: not recognized before the amount, the amount before the balance limit
    problem(await refund(api, ref, "1000000000.00"), 409, "reservation_not_recognized")


async def test_a_refund_over_the_balance_limit_is_refused(api: Api, ctx: Context) -> None:
    ref = await charged(api, 5, 1, "50.00", "50.00")
    await ctx.redis.hset(ctx.ledger.keys.account(5), mapping={"available": MAX_BALANCE_KOPECKS - 10_00})
    problem(await refund(api, ref, "10.01"), 409, "balance_limit_exceeded")
    assert (await lookup(api, ref))["refunded_amount"] == "0.00"
    problem(await refund(api, ref, "50.01"), 409, "refund_exceeds_charge")  # checked before the limit
    r = await refund(api, ref, "10.00")
    assert r.status == 201 and r.json["balance"]["available"] == "10000000000000.00"


async def test_a_retry_with_its_key_refunds_once_and_without_a_key_twice(api: Api) -> None:
    ref = await charged(api, 6, 1, "20.00", "20.00")
    first = await refund(api, ref, "5.00", key="refund-1")
    again = await refund(api, ref, "5", key="refund-1")  # the same request, spelled otherwise
    assert first.status == again.status == 201
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert again.json == first.json
    assert (await lookup(api, ref))["refunded_amount"] == "5.00"
    problem(await refund(api, ref, "6.00", key="refund-1"), 422, "idempotency_key_reused")
    # a refused refund is the key's outcome too
    refused = await refund(api, ref, "15.01", key="refund-2")
    problem(refused, 409, "refund_exceeds_charge")
    replayed = await refund(api, ref, "15.01", key="refund-2")
    assert replayed.headers.get("Idempotent-Replayed") == "true" and replayed.json == refused.json
    # without a key every refund that fits applies
    assert (await refund(api, ref, "5.00")).status == 201
    assert (await refund(api, ref, "5.00")).status == 201
    assert (await lookup(api, ref))["refunded_amount"] == "15.00"
    assert (await api.balance(6)).json["available"] == "15.00"


@pytest.mark.parametrize("token", ["tok-payments", "tok-support", "tok-accounting"])
async def test_refunds_take_the_orders_role(api: Api, token: str) -> None:
    ref = await charged(api, 7, 1, "2.00", "2.00")
    problem(await refund(api, ref, "1.00", token=token), 403, "forbidden")
    problem(await api.post("/v1/refunds", {**ref, "amount": "1.00"}, token=None), 401, "unauthenticated")
    assert (await refund(api, ref, "1.00", token="tok-admin")).status == 201


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": 1, "service_id": 7, "order_id": 42},
        {"user_id": 1, "service_id": 7, "order_id": 42, "amount": "0"},
        {"user_id": 1, "service_id": 7, "order_id": 42, "amount": "-1.00"},
        {"user_id": 1, "service_id": 7, "order_id": 42, "amount": "1.005"},
        {"user_id": 1, "service_id": 7, "amount": "1.00"},
        {"user_id": 1, "service_id": 7, "order_id": 42, "amount": "1.00", "service_name": "x"},
        {"user_id": 1, "service_id": 7, "order_id": 42, "amount": "1.00", "comment": "a\u0007"},
    ],
)
async def test_a_bad_refund_is_a_validation_error_that_changes_nothing(api: Api, body: dict[str, Any]) -> None:
    ref = await charged(api, 1, 42, "10.00", "10.00")
    problem(await api.post("/v1/refunds", body, **ORDERS), 400, "validation_error")
    assert (await lookup(api, ref))["refunded_amount"] == "0.00"


async def test_batch_op_refund_is_the_endpoint(api: Api) -> None:
    await api.deposit(8, "100.00")
    ref = {"user_id": 8, "service_id": 3, "order_id": 5}
    r = await api.post(
        "/v1/batch",
        {
            "operations": [
                {"op": "refund", **ref, "amount": "1.00"},
                {"op": "reserve", **ref, "amount": "60.00"},
                {"op": "refund", **ref, "amount": "1.00"},
                {"op": "recognize", **ref, "amount": "50.00"},
                {"op": "refund", "idempotency_key": "b1", **ref, "amount": "20.00", "comment": "late"},
                {"op": "refund", **ref, "amount": "30.01"},
                {"op": "refund", **ref, "amount": "30.00"},
                {"op": "refund", **ref},
            ]
        },
        token="tok-orders",
    )
    assert r.status == 200, r.body
    results = r.json["results"]
    assert [item["status"] for item in results] == [404, 201, 409, 200, 201, 409, 201, 400]
    assert [item["body"].get("code") for item in results] == [
        "reservation_not_found",
        None,
        "reservation_not_recognized",
        None,
        None,
        "refund_exceeds_charge",
        None,
        "validation_error",
    ]
    assert results[6]["body"]["reservation"]["refunded_amount"] == "50.00"
    assert results[6]["body"]["balance"] == {"user_id": 8, "available": "100.00", "reserved": "0.00"}
    # the batch's idempotency_key and the endpoint's Idempotency-Key are interchangeable
    same = await refund(api, ref, "20.00", comment="late", key="b1")
    assert same.headers.get("Idempotent-Replayed") == "true" and same.json == results[4]["body"]
    # checked against the caller's roles on its own
    denied = await api.post("/v1/batch", {"operations": [{"op": "refund", **ref, "amount": "1"}]}, token="tok-payments")
    assert denied.status == 200 and denied.json["results"][0]["status"] == 403
    assert denied.json["results"][0]["body"]["code"] == "forbidden"
    assert (await lookup(api, ref))["refunded_amount"] == "50.00"


async def test_history_statement_and_report_count_the_refund(api: Api, ctx: Context) -> None:
    ref = await charged(api, 9, 42, "100.00", "80.00")
    other = await charged(api, 10, 43, "10.00", "10.00", service_id=8, name="Баннер")
    first = (await refund(api, ref, "30.00")).json["transaction"]
    second = (await refund(api, other, "10.00")).json["transaction"]
    await ctx.projector.drain()
    page = await api.get("/v1/users/9/transactions?type=refund", token="tok-support")
    # history adds each item's link in the user's hash chain
    assert page.status == 200 and [{k: v for k, v in i.items() if k != "hash"} for i in page.json["items"]] == [first]
    english = await api.get(
        "/v1/users/9/transactions?type=refund,charge", token="tok-support", headers={"Accept-Language": "en"}
    )
    assert [item["description"] for item in english.json["items"]] == [
        "Refund of 30.00 RUB for service “Продвижение”, order 42",
        "Charge of 80.00 RUB for service “Продвижение”, order 42",
    ]
    month = datetime.now(ZoneInfo(ctx.settings.report_tz)).strftime("%Y-%m")
    revenue = 0
    for user_id in (9, 10):
        r = await api.get(f"/v1/users/{user_id}/statements/{month}", token="tok-accounting")
        assert r.status == 200, r.body
        totals = {t: kop(v) for t, v in r.json["totals"].items()}
        available, reserved = movement(totals)
        assert kop(r.json["opening"]["available"]) + available == kop(r.json["closing"]["available"])
        assert kop(r.json["opening"]["reserved"]) + reserved == kop(r.json["closing"]["reserved"])
        revenue += revenue_kopecks(totals)
    assert totals["refund"] == 10_00 and second["type"] == "refund"
    report = await ctx.reports.totals(month)
    assert report == [("Баннер", 0), ("Продвижение", 50_00)]
    assert revenue == sum(total for _, total in report) == 50_00
