"""The console's look-ups by transaction id and by (service, order), and times in BILLING_REPORT_TZ on every page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson import Int64
from pymongo.errors import ServerSelectionTimeoutError

from billing.api.auth import token_digest
from billing.bootstrap import Context
from billing.console.audit import AuditLog
from billing.core.timefmt import datetime_to_ms
from billing.projection.store import LedgerStore
from tests.support.api import Api
from tests.support.console import ConsoleClient, Page

MOSCOW = ZoneInfo("Europe/Moscow")
ALERT = re.compile(r'role="alert"[^>]*>([^<]*)<')
ORDERS = {"token": "tok-orders"}


def alert(page: Page) -> str:
    match = ALERT.search(page.text)
    assert match, page.text
    return match.group(1)


def moscow(rfc3339: str) -> str:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(MOSCOW).strftime("%Y-%m-%d %H:%M:%S")


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


async def audit_entries(ctx: Context) -> list[Any]:
    entries, _ = await AuditLog(ctx.redis, ctx.ledger.keys, 1000).page(size=1000)
    return entries


async def at_clock(ctx: Context, user_id: int, moment: datetime) -> None:
    """The user's partition clock set to `moment` (it never goes back), so their next transaction is at it."""
    keys = ctx.ledger.keys
    await ctx.redis.hset(keys.meta(keys.partition_of(user_id)), "clock", datetime_to_ms(moment))


async def an_order(api: Api, ctx: Context) -> dict[str, Any]:
    """Service 3, order 42: user 8 reserves 30.00, is charged 30.00 and refunded 10.00; user 9 reserves 5.00
    under the same (service, order) and cancels. Returns the answers' transactions."""
    await api.deposit(8, "100.00")
    await api.deposit(9, "10.00")
    ref = {"user_id": 8, "service_id": 3, "order_id": 42}
    reserved = await api.post("/v1/reservations", {**ref, "amount": "30.00", "service_name": "Продвижение"}, **ORDERS)
    charged = await api.post("/v1/reservations/recognize", {**ref, "amount": "30.00"}, **ORDERS)
    refunded = await api.post("/v1/refunds", {**ref, "amount": "10.00", "comment": "жалоба"}, **ORDERS)
    other = {"user_id": 9, "service_id": 3, "order_id": 42}
    assert (await api.post("/v1/reservations", {**other, "amount": "5.00"}, **ORDERS)).status == 201
    assert (await api.post("/v1/reservations/cancel", other, **ORDERS)).status == 200
    assert (reserved.status, charged.status, refunded.status) == (201, 200, 201), refunded.body
    await ctx.projector.drain()
    return {
        "reserve": reserved.json["transaction"],
        "charge": charged.json["transaction"],
        "refund": refunded.json["transaction"],
    }


async def test_the_home_form_leads_to_each_lookup(console: ConsoleClient) -> None:
    await console.sign_in("tok-support")
    home = await console.get("/console")
    assert 'action="/console/find"' in home.text and 'name="transaction"' in home.text
    for query, target in (
        ("user=7", "/console/users?user=7"),
        ("user=+7+&transaction=&service=&order=", "/console/users?user=7"),
        ("transaction=15", "/console/transactions?id=15"),
        ("service=3&order=42", "/console/orders?service=3&order=42"),
    ):
        page = await console.get("/console/find?" + query)
        assert (page.status, page.headers["Location"]) == (303, target), query


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Заполните что-то одно"),
        ("user=1&transaction=2", "Заполните что-то одно"),
        ("transaction=2&order=5", "Заполните что-то одно"),
        ("user=12x", "ID пользователя — целое число"),
        ("transaction=0", "ID операции — целое число"),
        ("transaction=9223372036854775808", "ID операции — целое число"),
        ("service=3", "Нужны ID услуги и ID заказа"),
        ("order=3", "Нужны ID услуги и ID заказа"),
        ("service=-1&order=3", "Нужны ID услуги и ID заказа"),
    ],
)
async def test_a_malformed_search_is_a_400_page_that_keeps_the_input(
    console: ConsoleClient, ctx: Context, query: str, message: str
) -> None:
    await console.sign_in("tok-support")
    page = await console.get("/console/find?" + query)
    assert page.status == 400 and alert(page).startswith(message)
    for name, value in (pair.split("=") for pair in query.split("&") if pair):
        assert f'name="{name}" type="text" inputmode="numeric" maxlength="19" value="{value}"' in page.text
    assert await audit_entries(ctx) == []


async def test_a_transaction_by_its_id(console: ConsoleClient, api: Api, ctx: Context) -> None:
    txns = await an_order(api, ctx)
    await console.sign_in("tok-support")
    refund = txns["refund"]
    page = await console.get(f"/console/transactions?id={refund['id']}")
    assert page.status == 200
    assert '<span class="tag tag-refund" id="txn-type">Возврат за услугу</span>' in page.text
    assert '<span id="txn-amount">10.00 ₽</span>' in page.text
    assert '<a href="/console/users?user=8">Страница пользователя 8</a>' in page.text
    assert f'<dd id="txn-time">{moscow(refund["created_at"])}</dd>' in page.text
    assert "Время (Europe/Moscow)" in page.text
    assert "Возврат 10.00 ₽ за услугу «<bdi>Продвижение</bdi>», заказ 42" in page.text
    assert '<dd id="txn-comment"><bdi>жалоба</bdi></dd>' in page.text
    stored = await LedgerStore(ctx.mongo).transaction(int(refund["id"]))
    assert stored is not None and stored.get("hash")
    assert f'<code class="hash" id="txn-hash">{stored["hash"]}</code>' in page.text
    assert 'href="/console/orders?service=3&amp;order=42"' in page.text
    english = await console.get(f"/console/transactions?id={refund['id']}&lang=en")
    assert "Refund of 10.00 RUB for service “<bdi>Продвижение</bdi>”, order 42" in english.text
    assert "User 8&#x27;s page" in english.text and "Time (Europe/Moscow)" in english.text
    [entry, _] = await audit_entries(ctx)
    assert (entry.who, entry.page, entry.user_id) == (
        token_digest("tok-support").hex()[:12],
        "/console/transactions",
        8,
    )


async def test_an_unknown_or_malformed_transaction_id(console: ConsoleClient, api: Api, ctx: Context) -> None:
    await console.sign_in("tok-support")
    missing = await console.get("/console/transactions?id=987654")
    assert missing.status == 404 and alert(missing).startswith("Операции 987654 нет в истории.")
    for raw in ("abc", "", "0", "1.5", "99999999999999999999"):
        bad = await console.get(f"/console/transactions?id={raw}&lang=en")
        assert bad.status == 400 and alert(bad) == "A transaction ID is an integer from 1 to 2^63−1.", raw
    assert await audit_entries(ctx) == []  # nobody's money was shown


async def test_an_order_shows_each_users_reservation_and_transactions(
    console: ConsoleClient, api: Api, ctx: Context
) -> None:
    txns = await an_order(api, ctx)
    await console.sign_in("tok-support")
    page = await console.get("/console/orders?service=3&order=42")
    assert page.status == 200
    assert '<p id="service-name">Услуга: <bdi>Продвижение</bdi></p>' in page.text
    first = between(page.text, 'data-user="8"', "</section>")
    assert '<dd class="state">списан</dd>' in first and '<dd class="amount">30.00 ₽</dd>' in first
    assert '<dd class="recognized">30.00 ₽</dd>' in first and '<dd class="refunded">10.00 ₽</dd>' in first
    assert '<a href="/console/users?user=8">' in first
    rows = re.findall(r'<tr data-id="(\d+)">', first)
    assert rows == [str(txns[kind]["id"]) for kind in ("reserve", "charge", "refund")]
    assert (
        f'<a href="/console/transactions?id={txns["charge"]["id"]}">{moscow(txns["charge"]["created_at"])}</a>' in first
    )
    second = between(page.text, 'data-user="9"', "</section>")
    assert '<dd class="state">отменён</dd>' in second and 'class="refunded"' not in second
    assert [m for m in re.findall(r'tag tag-(\w+)"', second)] == ["reserve", "release"]
    entries = await audit_entries(ctx)
    assert sorted((e.page, e.user_id) for e in entries) == [("/console/orders", 8), ("/console/orders", 9)]


async def test_an_order_with_no_reservation_record_still_shows_its_transactions(
    console: ConsoleClient, api: Api, ctx: Context
) -> None:
    await an_order(api, ctx)
    await ctx.redis.delete(ctx.ledger.keys.reservation(9, 3, 42))
    await console.sign_in("tok-support")
    page = await console.get("/console/orders?service=3&order=42&lang=en")
    second = between(page.text, 'data-user="9"', "</section>")
    assert "No reservation record." in second and second.count("<tr data-id=") == 2


async def test_an_unknown_or_malformed_order(console: ConsoleClient, api: Api, ctx: Context) -> None:
    await an_order(api, ctx)
    await console.sign_in("tok-support")
    missing = await console.get("/console/orders?service=3&order=43")
    assert missing.status == 404 and alert(missing).startswith("Операций по услуге 3, заказу 43 нет в истории.")
    for query in ("service=3", "order=42", "service=x&order=42", "service=3&order=0", "service=&order="):
        bad = await console.get("/console/orders?" + query)
        assert bad.status == 400 and alert(bad).startswith("Нужны ID услуги и ID заказа"), query
    assert await audit_entries(ctx) == []


async def test_the_lookups_are_for_support_and_admin(console: ConsoleClient, api: Api, ctx: Context) -> None:
    txns = await an_order(api, ctx)
    paths = (
        "/console/find?user=8",
        f"/console/transactions?id={txns['reserve']['id']}",
        "/console/orders?service=3&order=42",
    )
    for path in paths:
        assert (await console.get(path)).status == 401
    await console.sign_in("tok-accounting")
    assert 'action="/console/find"' not in (await console.get("/console")).text
    for path in paths:
        page = await console.get(path)
        assert page.status == 403 and "support" in page.text, path
    for token in ("tok-support", "tok-admin"):
        await console.sign_in(token)
        assert [(await console.get(path)).status for path in paths] == [303, 200, 200]
    assert await audit_entries(ctx) != [] and all(
        e.who != token_digest("tok-accounting").hex()[:12] for e in await audit_entries(ctx)
    )


async def test_a_store_outage_is_a_clear_page(
    console: ConsoleClient, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any) -> Any:
        raise ServerSelectionTimeoutError("mongo down")

    monkeypatch.setattr(LedgerStore, "transaction", down)
    monkeypatch.setattr(LedgerStore, "order_transactions", down)
    await console.sign_in("tok-support")
    for path in ("/console/transactions?id=1", "/console/orders?service=1&order=1"):
        page = await console.get(path)
        assert page.status == 503 and alert(page) == "Хранилище недоступно, попробуйте позже."


async def test_times_are_in_the_report_zone_and_it_is_named(console: ConsoleClient, api: Api, ctx: Context) -> None:
    """23:30 UTC on 5 November 2031 is 02:30 on the 6th in Moscow: the history shows and filters it there."""
    await at_clock(ctx, 11, datetime(2031, 11, 5, 23, 30, tzinfo=UTC))
    deposit = await api.deposit(11, "3.00")
    assert deposit.json["transaction"]["created_at"].startswith("2031-11-05T23:30:00")
    await ctx.projector.drain()
    await console.sign_in("tok-admin")
    page = await console.get("/console/users?user=11")
    row = between(page.text, f'<tr data-id="{deposit.json["transaction"]["id"]}">', "</tr>")
    assert '<td data-label="Дата (Europe/Moscow)">2031-11-06 02:30:00</td>' in row
    assert '<label for="from">С даты (Europe/Moscow)</label>' in page.text
    assert "Даты — дни в зоне Europe/Moscow." in page.text
    on_the_6th = await console.get("/console/users?user=11&from=2031-11-06&to=2031-11-06")
    assert on_the_6th.text.count("<tr data-id=") == 1
    on_the_5th = await console.get("/console/users?user=11&from=2031-11-05&to=2031-11-05")
    assert 'id="no-history"' in on_the_5th.text  # a UTC day would have held it
    audit = await console.get("/console/audit")
    [entry, *_] = await audit_entries(ctx)
    assert '<th scope="col">Время (Europe/Moscow)</th>' in audit.text
    assert f'<td data-label="Время (Europe/Moscow)">{moscow(entry.time)}</td>' in audit.text
    reports = await console.get("/console/reports?month=2031-11&lang=en")
    expires = re.search(r"The link works until (\S+ \S+) \(Europe/Moscow\)\.", reports.text)
    assert expires, reports.text
    for path in ("/console", "/console/users?user=11", "/console/audit", "/console/reports", "/console/statements"):
        shown = await console.get(path + ("&" if "?" in path else "?") + "lang=ru")
        assert '<span class="zone" id="zone">Время — в зоне Europe/Moscow</span>' in shown.text, path
        assert "(UTC)" not in shown.text, path


async def test_a_lookup_of_a_transaction_in_mongo_without_a_hash_shows_a_dash(
    console: ConsoleClient, ctx: Context
) -> None:
    """A document stored before the hash chain existed has no hash: the page says so instead of failing."""
    await ctx.mongo["transactions"].insert_one(
        {
            "_id": Int64(5_000_000),
            "type": "deposit",
            "user_id": Int64(12),
            "amount": Int64(100),
            "available_after": Int64(100),
            "reserved_after": Int64(0),
            "created_at": datetime(2031, 1, 1, tzinfo=UTC),
        }
    )
    await console.sign_in("tok-support")
    page = await console.get("/console/transactions?id=5000000")
    assert page.status == 200 and '<code class="hash" id="txn-hash">—</code>' in page.text
    assert '<dd id="txn-time">2031-01-01 03:00:00</dd>' in page.text
