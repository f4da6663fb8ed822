"""The console's look-ups in a real browser: from the home page's search form to a transaction and an order."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from billing.bootstrap import Context
from billing.core.timefmt import datetime_to_ms
from tests.browser.test_console_browser import LAPTOP, PHONE, browser, shots, sign_in
from tests.support.api import Api

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("redis_backend", ["redis"], indirect=True)]
__all__ = ["browser", "shots"]  # the fixtures, shared with the console's other browser tests
USER = 303


async def seed(api: Api, ctx: Context) -> dict[str, int]:
    """USER deposits 50.00 at 20:59:30 UTC on 31 January 2032 (23:59:30 in Moscow), reserves 20.00 for service 5,
    order 77 a minute later (00:00:30 on 1 February in Moscow) and is charged 20.00; returns the ids."""
    keys = ctx.ledger.keys
    meta = keys.meta(keys.partition_of(USER))
    ids: dict[str, int] = {}
    ref = {"user_id": USER, "service_id": 5, "order_id": 77}
    steps = [
        ("deposit", datetime(2032, 1, 31, 20, 59, 30, tzinfo=UTC), "/v1/deposits", {"amount": "50.00"}, "tok-payments"),
        (
            "reserve",
            datetime(2032, 1, 31, 21, 0, 30, tzinfo=UTC),
            "/v1/reservations",
            {**ref, "amount": "20.00", "service_name": "Доставка"},
            "tok-orders",
        ),
        (
            "charge",
            datetime(2032, 1, 31, 21, 5, tzinfo=UTC),
            "/v1/reservations/recognize",
            {**ref, "amount": "20.00"},
            "tok-orders",
        ),
    ]
    for name, moment, path, body, token in steps:
        await ctx.redis.hset(meta, "clock", datetime_to_ms(moment))  # the partition's clock never goes back
        answer = await api.post(path, {"user_id": USER, **body}, token=token)
        assert answer.status in (200, 201), answer.body
        ids[name] = int(answer.json["transaction"]["id"])
    await ctx.projector.drain()
    return ids


async def test_support_finds_a_transaction_then_its_order_in_russian(
    browser: Browser, api: Api, ctx: Context, shots: Path
) -> None:
    ids = await seed(api, ctx)
    context = await browser.new_context(viewport=LAPTOP, locale="ru-RU")
    page = await context.new_page()
    await sign_in(page, api.base_url, "/console", "tok-support")
    await expect(page.locator("#zone")).to_have_text("Время — в зоне Europe/Moscow")

    # a malformed id: the form says what is wrong and keeps what was typed
    await page.get_by_label("ID операции").fill("12abc")
    await page.get_by_label("ID операции").press("Enter")
    await expect(page.locator("#find-error")).to_have_text("ID операции — целое число от 1 до 2^63−1.")
    await expect(page.get_by_label("ID операции")).to_have_value("12abc")

    await page.get_by_label("ID операции").fill(str(ids["reserve"]))
    await page.get_by_role("button", name="Найти").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Операция {ids['reserve']}")
    await expect(page.locator("#txn-type")).to_have_text("Резерв")
    await expect(page.locator("#txn-amount")).to_have_text("20.00 ₽")
    await expect(page.locator("#txn-time")).to_have_text("2032-02-01 00:00:30")  # Moscow's day, not UTC's
    await expect(page.get_by_text("Время (Europe/Moscow)", exact=True)).to_be_visible()
    await expect(page.locator("#txn-description")).to_contain_text("Доставка")
    await expect(page.locator("#txn-hash")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    await page.screenshot(path=str(shots / "lookup-transaction.png"), full_page=True)

    # on to its order: the reservation (charged) and its transactions, each a link
    await page.locator("#txn-order a").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Услуга 5, заказ 77")
    part = page.locator(f'section.order-part[data-user="{USER}"]')
    await expect(part.locator("dd.state")).to_have_text("списан")
    await expect(part.locator("dd.recognized")).to_have_text("20.00 ₽")
    await expect(part.locator("tbody tr")).to_have_count(2)
    await page.screenshot(path=str(shots / "lookup-order.png"), full_page=True)
    await part.get_by_role("link", name=f"Страница пользователя {USER}").click()
    await expect(page.locator("#available")).to_have_text("30.00 ₽")
    await context.close()


async def test_support_finds_an_order_and_a_missing_one_in_english_on_a_phone(
    browser: Browser, api: Api, ctx: Context, shots: Path
) -> None:
    ids = await seed(api, ctx)
    context = await browser.new_context(viewport=PHONE, locale="ru-RU")
    page = await context.new_page()
    await sign_in(page, api.base_url, "/console", "tok-support")
    await page.get_by_role("link", name="English").click()  # remembered for the pages after
    await expect(page.locator("#zone")).to_have_text("Times in Europe/Moscow")

    await page.get_by_label("Service ID").fill("5")
    await page.get_by_label("Order ID").fill("78")
    await page.get_by_label("Order ID").press("Enter")
    await expect(page.get_by_role("alert")).to_have_text(
        "No transaction of service 5, order 78 is in the history. New transactions reach it in about a second."
    )
    await page.get_by_label("Order ID").fill("77")
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Service 5, order 77")
    part = page.locator(f'section.order-part[data-user="{USER}"]')
    await expect(part.locator("dd.state")).to_have_text("charged")
    await expect(part.locator("dd.created")).to_have_text("2032-02-01 00:00:30")
    await page.screenshot(path=str(shots / "lookup-order-phone.png"), full_page=True)
    await part.locator(f'tr[data-id="{ids["charge"]}"] a').click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Transaction {ids['charge']}")
    await expect(page.locator("#txn-type")).to_have_text("Charge")

    # both fields and the user id at once: one thing at a time, said in English
    await page.goto(api.base_url + "/console")
    await page.get_by_label("User ID").fill(str(USER))
    await page.get_by_label("Transaction ID").fill(str(ids["deposit"]))
    await page.get_by_label("Transaction ID").press("Enter")
    await expect(page.locator("#find-error")).to_have_text(
        "Fill in one thing: a user ID, a transaction ID, or a service ID with an order ID."
    )
    await context.close()
