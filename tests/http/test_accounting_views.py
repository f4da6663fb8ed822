"""The accounting views over HTTP: the balance at a moment and the monthly statement (JSON and CSV).

Times are set, not waited for: a partition's clock never goes back (lua/_prelude.lua clock()), so raising
its stored clock into the future makes the ledger scripts stamp their transactions with exactly that time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from bson.int64 import Int64

from billing.bootstrap import Context
from billing.core.timefmt import datetime_to_ms
from billing.core.transactions import TRANSACTION_TYPES
from billing.views.accounting import Accounting, movement, revenue_kopecks
from tests.support.api import Api, problem

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True),
    pytest.mark.parametrize("redis_backend", ["fakeredis"], indirect=True),
]

# Moscow (the default BILLING_REPORT_TZ, UTC+3): November 2031 is [2031-10-31T21:00Z, 2031-11-30T21:00Z).
NOV_START = datetime(2031, 10, 31, 21, tzinfo=UTC)
NOV_END = datetime(2031, 11, 30, 21, tzinfo=UTC)
MS = datetime_to_ms


async def at_time(ctx: Context, user_ids: list[int], moment: datetime | int) -> None:
    """The next transactions of these users' partitions are stamped `moment` (which must not go back)."""
    ms = moment if isinstance(moment, int) else MS(moment)
    keys = ctx.ledger.keys
    for partition in {keys.partition_of(user_id) for user_id in user_ids}:
        await ctx.redis.hset(keys.meta(partition), "clock", ms)


async def ok(api: Api, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    answer = await api.post(path, body, token=token)
    assert answer.status in (200, 201), answer.body
    result: dict[str, Any] = answer.json
    return result


async def deposit(api: Api, user_id: int, amount: str, comment: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user_id, "amount": amount}
    if comment is not None:
        body["comment"] = comment
    return await ok(api, "/v1/deposits", body, "tok-payments")


async def orders(api: Api, path: str, **body: Any) -> dict[str, Any]:
    return await ok(api, path, body, "tok-orders")


async def balance_at(api: Api, user_id: int, at: str, token: str = "tok-support") -> Any:
    answer = await api.get(f"/v1/users/{user_id}/balance?at={quote(at, safe='')}", token=token)
    assert answer.status == 200, answer.body
    return answer.json


async def statement(api: Api, user_id: int, month: str, token: str = "tok-accounting") -> Any:
    answer = await api.get(f"/v1/users/{user_id}/statements/{month}", token=token)
    assert answer.status == 200, answer.body
    return answer.json


def kop(text: str) -> int:
    rubles, kopecks = text.split(".")
    return int(rubles) * 100 + (int(kopecks) if not rubles.startswith("-") else -int(kopecks))


async def test_balance_at_a_moment_is_the_balance_after_the_last_transaction_up_to_it(api: Api, ctx: Context) -> None:
    t0 = MS(datetime(2031, 11, 5, 12, tzinfo=UTC))
    await at_time(ctx, [1], t0)
    await deposit(api, 1, "100.00")
    await at_time(ctx, [1], t0 + 1000)
    await orders(api, "/v1/reservations", user_id=1, service_id=7, order_id=1, amount="30.00")
    await at_time(ctx, [1], t0 + 2000)
    await orders(api, "/v1/reservations/recognize", user_id=1, service_id=7, order_id=1, amount="25.50")
    await ctx.projector.drain()

    assert await balance_at(api, 1, "2031-11-05T11:59:59.999Z") == {
        "user_id": 1,
        "available": "0.00",
        "reserved": "0.00",
        "as_of": "2031-11-05T11:59:59.999Z",
    }
    # created_at <= at: a transaction at exactly `at` counts
    first = await balance_at(api, 1, "2031-11-05T12:00:00.000Z")
    assert (first["available"], first["reserved"]) == ("100.00", "0.00")
    # the same moment with an offset, and finer than a millisecond: as_of is `at` in UTC, to the millisecond
    reserved = await balance_at(api, 1, "2031-11-05T15:00:01.9999+03:00")
    assert reserved == {"user_id": 1, "available": "70.00", "reserved": "30.00", "as_of": "2031-11-05T12:00:01.999Z"}
    # a recognition writes a charge and a release in one run, both at its time
    after = await balance_at(api, 1, "2031-11-05T12:00:02Z")
    assert (after["available"], after["reserved"]) == ("74.50", "0.00")
    later = await balance_at(api, 1, "2999-01-01T00:00:00Z", token="tok-payments")
    assert (later["available"], later["reserved"]) == ("74.50", "0.00")
    for token in ("tok-orders", "tok-accounting", "tok-admin"):
        assert (await balance_at(api, 1, "2031-11-05T12:00:00Z", token=token))["available"] == "100.00"
    # without `at`: the current balance from Redis, unchanged
    current = await api.balance(1)
    assert current.json == {"user_id": 1, "available": "74.50", "reserved": "0.00"}


async def test_balance_at_refuses_what_is_not_exactly_rfc_3339(api: Api, ctx: Context) -> None:
    await deposit(api, 1, "1.00")
    await ctx.projector.drain()
    out_of_range = ("9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00+01:00", "2031-11-05T12:00:00+24:00")
    for bad in (
        "2031-11-05T12:00:00",
        "2031-11-05",
        "",
        "2031-11-05T12:00:00+03",
        " 2031-11-05T12:00:00Z",
        *out_of_range,
    ):
        answer = await api.get(f"/v1/users/1/balance?at={quote(bad, safe='')}", token="tok-support")
        problem(answer, 400, "validation_error")
        assert answer.json["errors"][0]["field"] == "at", bad
    assert (await balance_at(api, 1, "9999-12-31T23:59:59.998Z"))["available"] == "1.00"
    assert (await balance_at(api, 1, "0001-01-01T00:00:00Z"))["available"] == "0.00"
    twice = await api.get("/v1/users/1/balance?at=2031-11-05T12:00:00Z&at=2031-11-05T12:00:00Z", token="tok-support")
    problem(twice, 400, "validation_error")
    problem(
        await api.get("/v1/users/99/balance?at=2031-11-05T12:00:00Z", token="tok-support"), 404, "account_not_found"
    )
    problem(await api.get("/v1/users/1/balance?at=2031-11-05T12:00:00Z", token=None), 401, "unauthenticated")


async def test_balance_at_reads_only_what_the_projection_has_settled(api: Api, ctx: Context) -> None:
    t0 = MS(datetime(2031, 11, 5, 12, tzinfo=UTC))
    await at_time(ctx, [1], t0)
    await deposit(api, 1, "10.00")
    await ctx.projector.drain()
    watermark = await ctx.accounting._watermarks[ctx.ledger.keys.partition_of(1)].read()
    assert watermark is not None
    # a transaction above the watermark (an older neighbour of it may still be on its way): not counted yet
    beyond = {
        "_id": Int64(watermark + 16 * 5),
        "type": "deposit",
        "user_id": Int64(1),
        "amount": Int64(500),
        "available_after": Int64(1500),
        "reserved_after": Int64(0),
        "created_at": datetime(2031, 11, 5, 12, 0, 1, tzinfo=UTC),
    }
    await ctx.mongo["transactions"].insert_one(beyond)
    assert (await balance_at(api, 1, "2031-11-06T00:00:00Z"))["available"] == "10.00"
    assert (await statement(api, 1, "2031-11"))["count"] == 1


async def test_statement_opening_movements_closing_and_the_revenue_report(api: Api, ctx: Context) -> None:
    users = [1, 2]
    await at_time(ctx, users, datetime(2031, 10, 20, tzinfo=UTC))
    await deposit(api, 1, "1000.00", comment="=HYPERLINK(1)")
    await deposit(api, 2, "50.00")
    # reserved in October, recognized in November (the last Moscow millisecond of October, then its first of
    # November): the reservation crosses the month boundary
    # (reserved for a month: the default lifetime is a week)
    month = 31 * 24 * 3600
    await orders(
        api, "/v1/reservations", user_id=1, service_id=7, order_id=1, amount="300.00", comment="a; b", expires_in=month
    )
    await at_time(ctx, users, MS(NOV_START) - 1)
    await orders(api, "/v1/reservations", user_id=2, service_id=7, order_id=2, amount="20.00", expires_in=month)
    await at_time(ctx, users, NOV_START)
    await orders(api, "/v1/reservations/recognize", user_id=1, service_id=7, order_id=1, amount="250.50")
    await at_time(ctx, users, datetime(2031, 11, 10, tzinfo=UTC))
    await ok(api, "/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "0.01"}, "tok-payments")
    await orders(api, "/v1/reservations/recognize", user_id=2, service_id=7, order_id=2, amount="20.00")
    await at_time(ctx, users, MS(NOV_END) - 1)
    await orders(api, "/v1/reservations", user_id=1, service_id=8, order_id=3, amount="99.99")
    await at_time(ctx, users, NOV_END)
    await orders(api, "/v1/reservations/cancel", user_id=1, service_id=8, order_id=3)
    await ctx.projector.drain()

    october = await statement(api, 1, "2031-10")
    november = await statement(api, 1, "2031-11", token="tok-support")
    december = await statement(api, 1, "2031-12")
    assert october == {
        "user_id": 1,
        "month": "2031-10",
        "opening": {"available": "0.00", "reserved": "0.00"},
        "closing": {"available": "700.00", "reserved": "300.00"},
        "totals": {**dict.fromkeys(TRANSACTION_TYPES, "0.00"), "deposit": "1000.00", "reserve": "300.00"},
        "count": 2,
    }
    assert november == {
        "user_id": 1,
        "month": "2031-11",
        "opening": {"available": "700.00", "reserved": "300.00"},
        "closing": {"available": "649.50", "reserved": "99.99"},
        "totals": {
            **dict.fromkeys(TRANSACTION_TYPES, "0.00"),
            "charge": "250.50",
            "release": "49.50",
            "transfer_out": "0.01",
            "reserve": "99.99",
        },
        "count": 4,
    }
    assert december["opening"] == november["closing"] and december["count"] == 1
    assert december["closing"] == {"available": "749.49", "reserved": "0.00"}
    for body in (october, november, december):
        totals = {t: kop(v) for t, v in body["totals"].items()}
        moved = movement(totals)
        assert kop(body["opening"]["available"]) + moved[0] == kop(body["closing"]["available"])
        assert kop(body["opening"]["reserved"]) + moved[1] == kop(body["closing"]["reserved"])
    # the month's charges of all users = the revenue report's total for it
    for month in ("2031-10", "2031-11", "2031-12"):
        revenue = 0
        for user_id in users:
            body = await statement(api, user_id, month)
            revenue += revenue_kopecks({t: kop(v) for t, v in body["totals"].items()})
        assert revenue == sum(total for _, total in await ctx.reports.totals(month)), month
    assert revenue_kopecks({"charge": 5, "deposit": 7}) == 5

    # CSV: the same month's transactions, framed by the opening and closing balances
    answer = await api.get("/v1/users/1/statements/2031-10", token="tok-accounting", headers={"Accept": "text/csv"})
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="statement-1-2031-10.csv"'
    ids = [doc["_id"] async for doc in ctx.mongo["transactions"].find({"user_id": 1}, sort=[("_id", 1)])]
    assert answer.body.decode() == (
        "line;id;created_at;type;amount;available_after;reserved_after;service_id;order_id;counterparty_user_id;"
        "comment\r\n"
        "opening;;2031-09-30T21:00:00.000Z;;;0.00;0.00;;;;\r\n"
        f"transaction;{ids[0]};2031-10-20T00:00:00.000Z;deposit;1000.00;1000.00;0.00;;;;'=HYPERLINK(1)\r\n"
        f'transaction;{ids[1]};2031-10-20T00:00:00.000Z;reserve;300.00;700.00;300.00;7;1;;"a; b"\r\n'
        "closing;;2031-10-31T21:00:00.000Z;;;700.00;300.00;;;;\r\n"
    )
    november_csv = await api.get(
        "/v1/users/1/statements/2031-11", token="tok-support", headers={"Accept": "application/json;q=0.5, text/csv"}
    )
    lines = november_csv.body.decode().split("\r\n")
    assert lines[1] == "opening;;2031-10-31T21:00:00.000Z;;;700.00;300.00;;;;"
    assert [line.split(";")[3] for line in lines[2:-2]] == ["charge", "release", "transfer_out", "reserve"]
    assert lines[-2] == "closing;;2031-11-30T21:00:00.000Z;;;649.50;99.99;;;;" and lines[-1] == ""
    # JSON unless text/csv comes first (or JSON is refused)
    for accept in ("application/json, text/csv", "*/*", "text/csv;q=0, application/json"):
        answer = await api.get("/v1/users/1/statements/2031-11", token="tok-support", headers={"Accept": accept})
        assert answer.json == november, accept


async def test_statement_refuses_bad_months_roles_and_unknown_users(api: Api, ctx: Context) -> None:
    await deposit(api, 1, "1.00")
    for bad in ("2031-13", "2031-00", "2031-1", "1969-12", "3000-01", "2031-11.csv", "abcd-ef"):
        for accept in ("application/json", "text/csv"):
            answer = await api.get(f"/v1/users/1/statements/{bad}", token="tok-support", headers={"Accept": accept})
            problem(answer, 400, "validation_error")
            assert answer.json["errors"][0]["field"] == "month", bad
    problem(await api.get("/v1/users/0/statements/2031-11", token="tok-support"), 400, "validation_error")
    problem(await api.get("/v1/users/2/statements/2031-11", token="tok-support"), 404, "account_not_found")
    for token in ("tok-payments", "tok-orders"):
        problem(await api.get("/v1/users/1/statements/2031-11", token=token), 403, "forbidden")
    empty = await statement(api, 1, "1970-01")
    assert empty["opening"] == empty["closing"] == {"available": "0.00", "reserved": "0.00"}
    assert empty["count"] == 0 and set(empty["totals"].values()) == {"0.00"}


async def test_statement_months_follow_billing_report_tz(api: Api, ctx: Context) -> None:
    await at_time(ctx, [1], NOV_START)  # 1 November 00:00 in Moscow, still 31 October in New York
    await deposit(api, 1, "5.00")
    await ctx.projector.drain()
    new_york = Accounting(ctx.mongo, ctx.ledger, ctx.settings.model_copy(update={"report_tz": "America/New_York"}))
    october = (await new_york.statement(1, "2031-10")).body()
    assert october["count"] == 1 and october["closing"]["available"] == "5.00"
    assert (await new_york.statement(1, "2031-11")).count == 0
    moscow = await statement(api, 1, "2031-11")  # the service's zone: Europe/Moscow
    assert moscow["count"] == 1 and moscow["opening"]["available"] == "0.00"
