"""Reserve → recognize → project → report: the revenue report from real money operations over HTTP."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest

from billing.bootstrap import Context
from tests.support.api import Api

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)
MOSCOW = ZoneInfo("Europe/Moscow")  # the default BILLING_REPORT_TZ


async def orders(api: Api, path: str, **body: object) -> dict:
    answer = await api.post(path, body, token="tok-orders")
    assert answer.status in (200, 201), answer.body
    return answer.json


async def download(api: Api, month: str, bom: str | None = None) -> bytes:
    link = await api.get("/v1/reports/revenue?" + urlencode({"month": month}), token="tok-accounting")
    assert link.status == 200, link.body
    url = link.json["url"] + (f"&bom={bom}" if bom else "")
    answer = await api.get(url[len(api.base_url) :], token=None)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    return answer.body


async def test_recognized_revenue_reaches_the_report(api: Api, ctx: Context) -> None:
    started = datetime.now(MOSCOW).strftime("%Y-%m")
    assert (await api.deposit(1, "1000.00")).status == 201
    assert (await api.deposit(2, "50.00")).status == 201
    await orders(
        api, "/v1/reservations", user_id=1, service_id=7, order_id=1, amount="300.00", service_name="Продвижение"
    )
    await orders(api, "/v1/reservations/recognize", user_id=1, service_id=7, order_id=1, amount="250.50")
    await orders(api, "/v1/reservations", user_id=2, service_id=7, order_id=2, amount="10.00")
    await orders(api, "/v1/reservations/recognize", user_id=2, service_id=7, order_id=2, amount="10.00")
    await orders(api, "/v1/reservations", user_id=1, service_id=8, order_id=3, amount="99.99")  # held
    await orders(api, "/v1/reservations", user_id=1, service_id=9, order_id=4, amount="5.00")
    await orders(api, "/v1/reservations/cancel", user_id=1, service_id=9, order_id=4)  # cancelled
    await orders(api, "/v1/reservations", user_id=1, service_id=10, order_id=5, amount="1.25")
    await orders(api, "/v1/reservations/recognize", user_id=1, service_id=10, order_id=5, amount="1.25")
    named = await api.put("/v1/services/10", {"name": 'Ads; "Pro"'}, token="tok-orders")
    assert named.status == 200, named.body
    await ctx.projector.drain()

    month = datetime.now(MOSCOW).strftime("%Y-%m")
    if month != started:
        pytest.skip("the test ran across a month boundary in Moscow")
    expected = 'service;total\r\n"Ads; ""Pro""";1.25\r\nПродвижение;260.50\r\n'.encode()
    assert await download(api, month) == expected
    assert await download(api, month, bom="1") == b"\xef\xbb\xbf" + expected
    assert await ctx.reports.totals(month) == [('Ads; "Pro"', 125), ("Продвижение", 26_050)]

    # the month is not over: the next download shows the next charge
    await orders(api, "/v1/reservations/recognize", user_id=1, service_id=8, order_id=3, amount="0.01")
    await ctx.projector.drain()
    expected = 'service;total\r\n"Ads; ""Pro""";1.25\r\nservice 8;0.01\r\nПродвижение;260.50\r\n'.encode()
    assert await download(api, month) == expected
