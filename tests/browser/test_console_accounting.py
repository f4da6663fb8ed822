"""The console's statement page and balance-at-a-moment lookup in a real browser (Debian's Chromium)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from billing.bootstrap import Context
from billing.core.timefmt import datetime_to_ms
from tests.browser.test_console_browser import LAPTOP, browser, shots, sign_in
from tests.support.api import Api

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("redis_backend", ["redis"], indirect=True)]
__all__ = ["browser", "shots"]  # the fixtures, shared with the console's other browser tests
USER = 202


async def seed(api: Api, ctx: Context) -> None:
    """USER in November 2031, Moscow time: 100.00 in on the 5th at 15:00, 30.00 reserved at 15:10, 25.50
    charged on 1 December at 00:00 (so November closes with 30.00 reserved)."""
    keys = ctx.ledger.keys
    meta = keys.meta(keys.partition_of(USER))
    steps = [
        (datetime(2031, 11, 5, 12, 0, tzinfo=UTC), "/v1/deposits", {"amount": "100.00"}, "tok-payments"),
        (
            datetime(2031, 11, 5, 12, 10, tzinfo=UTC),
            "/v1/reservations",
            {"amount": "30.00", "order_id": 1, "expires_in": 31 * 24 * 3600},  # past the default week
            "tok-orders",
        ),
        (
            datetime(2031, 11, 30, 21, 0, tzinfo=UTC),
            "/v1/reservations/recognize",
            {"amount": "25.50", "order_id": 1},
            "tok-orders",
        ),
    ]
    for moment, path, body, token in steps:
        await ctx.redis.hset(meta, "clock", datetime_to_ms(moment))  # the partition's clock never goes back
        if token == "tok-orders":
            body = {**body, "service_id": 3}
        answer = await api.post(path, {"user_id": USER, **body}, token=token)
        assert answer.status in (200, 201), answer.body
    await ctx.projector.drain()


async def test_support_reads_a_balance_at_a_moment_and_a_statement(
    browser: Browser, api: Api, ctx: Context, shots: Path
) -> None:
    await seed(api, ctx)
    context = await browser.new_context(viewport=LAPTOP, locale="ru-RU", accept_downloads=True)
    page = await context.new_page()
    await sign_in(page, api.base_url, f"/console/users?user={USER}", "tok-support")

    # the moment is typed in Moscow time (the zone is named) and shown back in it
    await expect(page.get_by_label("Дата и время (время в зоне Europe/Moscow)")).to_be_visible()
    await page.goto(api.base_url + f"/console/users?user={USER}&at=2031-11-05T15:05")
    await expect(page.locator("#at-moment")).to_have_text("На 2031-11-05 15:05:00 (Europe/Moscow)")
    await expect(page.locator("#at-available")).to_have_text("100.00 ₽")
    await expect(page.locator("#at-reserved")).to_have_text("0.00 ₽")
    await page.goto(api.base_url + f"/console/users?user={USER}&at=2031-11-05T14:59:59")
    await expect(page.locator("#at-available")).to_have_text("0.00 ₽")
    await page.goto(api.base_url + f"/console/users?user={USER}&at=2031-11-05")
    await expect(page.locator("#at-error")).to_have_text("Дата и время: ГГГГ-ММ-ДДTЧЧ:ММ.")
    await page.goto(api.base_url + f"/console/users?user={USER}&at=2031-11-05T15:10")
    await expect(page.locator("#at-reserved")).to_have_text("30.00 ₽")
    await page.screenshot(path=str(shots / "balance-at.png"), full_page=True)

    # the statement: from the user page, then another month by the form
    await page.goto(api.base_url + f"/console/statements?user={USER}&month=2031-11")
    await expect(page.locator("#period")).to_have_text(
        "Период: 2031-11-01 00:00 — 2031-12-01 00:00 (время в зоне Europe/Moscow)"
    )
    await expect(page.locator("#opening")).to_contain_text("0.00 ₽")
    await expect(page.locator("#closing td").first).to_have_text("70.00 ₽")
    await expect(page.locator("#closing td").last).to_have_text("30.00 ₽")
    await expect(page.locator('#type-totals tr[data-type="deposit"] td.num')).to_have_text("100.00 ₽")
    await expect(page.locator('#type-totals tr[data-type="reserve"] td.num')).to_have_text("30.00 ₽")
    await expect(page.locator("#count")).to_have_text("2")
    await page.screenshot(path=str(shots / "statement.png"), full_page=True)
    async with page.expect_download() as waiting:
        await page.get_by_role("link", name="Скачать CSV").click()
    download = await waiting.value
    assert download.suggested_filename == f"statement-{USER}-2031-11.csv"
    lines = Path(await download.path()).read_bytes().decode("utf-8").split("\r\n")
    assert lines[1] == "opening;;2031-10-31T21:00:00.000Z;;;0.00;0.00;;;;"
    assert [line.split(";")[3] for line in lines[2:-2]] == ["deposit", "reserve"]
    assert lines[-2] == "closing;;2031-11-30T21:00:00.000Z;;;70.00;30.00;;;;"

    await page.get_by_label("Месяц").fill("2031-12")
    await page.get_by_role("button", name="Показать").click()
    await expect(page.locator("#opening td").last).to_have_text("30.00 ₽")
    await expect(page.locator('#type-totals tr[data-type="charge"] td.num')).to_have_text("25.50 ₽")
    await expect(page.locator('#type-totals tr[data-type="release"] td.num')).to_have_text("4.50 ₽")
    await context.close()


async def test_statement_states_in_english(browser: Browser, api: Api, ctx: Context) -> None:
    context = await browser.new_context(viewport=LAPTOP, locale="en-US")
    page = await context.new_page()
    await page.goto(api.base_url + "/console/login")
    await page.get_by_label("API token").fill("tok-accounting")
    await page.get_by_role("button", name="Sign in with the token").click()
    await page.get_by_role("link", name="Statements").first.click()
    await page.get_by_label("User ID").fill("777")
    await page.get_by_label("Month").fill("2031-11")
    await page.get_by_role("button", name="Show").click()
    await expect(page.get_by_role("alert")).to_have_text("User 777 has no account.")
    response = await page.goto(api.base_url + "/console/statements?user=1&month=2031-13")
    assert response is not None and response.status == 400
    await expect(page.get_by_role("alert")).to_have_text("The month must be YYYY-MM.")
    await context.close()
