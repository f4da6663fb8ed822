"""The console in a real browser: Debian's Chromium driven by Playwright against a live server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from billing.bootstrap import Context
from billing.console.accounts import Accounts
from tests.support.api import Api

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("redis_backend", ["redis"], indirect=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCRIPT_COMMENT = "<script>window.__pwned = 1</script> & «кавычки»"
USER = 101


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Screenshots go to docs/screenshots when BILLING_SCREENSHOTS=1 (to refresh docs/console.md), else to tmp."""
    if os.environ.get("BILLING_SCREENSHOTS") == "1":
        target = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path


def require_read_side(ctx: Context) -> None:
    missing = [name for name in ("projector", "history", "reports") if getattr(ctx, name) is None]
    assert not missing, f"the console needs {', '.join(missing)}"


async def seed(api: Api, ctx: Context) -> str:
    """26 transactions for USER (two pages), one open reservation, one charge; returns the charge's month."""
    for i in range(1, 23):
        comment = SCRIPT_COMMENT if i == 7 else f"пополнение {i}"
        r = await api.post(
            "/v1/deposits", {"user_id": USER, "amount": f"{i}.00", "comment": comment}, token="tok-payments"
        )
        assert r.status == 201, r.body
    orders = "tok-orders"
    body = {"user_id": USER, "service_id": 3, "order_id": 42, "amount": "30.00", "service_name": "Продвижение"}
    assert (await api.post("/v1/reservations", body, token=orders)).status == 201
    body = {"user_id": USER, "service_id": 3, "order_id": 42, "amount": "12.50"}
    charged = await api.post("/v1/reservations/recognize", body, token=orders)
    assert charged.status == 200, charged.body
    body = {"user_id": USER, "service_id": 4, "order_id": 7, "amount": "5.00", "service_name": "Подъём"}
    assert (await api.post("/v1/reservations", body, token=orders)).status == 201
    await ctx.projector.drain()
    created = datetime.fromisoformat(charged.json["transaction"]["created_at"].replace("Z", "+00:00"))
    return created.astimezone(ZoneInfo(ctx.settings.report_tz)).strftime("%Y-%m")


async def sign_in(page: Page, base: str, path: str, token: str, shot: Path | None = None) -> None:
    await page.goto(base + path)
    await expect(page.get_by_role("heading", name="Вход в консоль")).to_be_visible()
    await page.get_by_label("API-токен").fill(token)
    if shot is not None:
        await page.screenshot(path=str(shot))
    await page.get_by_label("API-токен").press("Enter")  # keyboard only
    await page.wait_for_load_state()


async def column(page: Page, css: str) -> list[str]:
    return [text.strip() for text in await page.locator(f"#history tbody {css}").all_inner_texts()]


def amounts(texts: list[str]) -> list[int]:
    return [int(t.replace("₽", "").replace(".", "").strip()) for t in texts]


async def test_support_looks_a_user_up_pages_and_sorts(browser: Browser, api: Api, ctx: Context, shots: Path) -> None:
    require_read_side(ctx)
    await seed(api, ctx)
    context = await browser.new_context(viewport=LAPTOP, locale="ru-RU")
    page = await context.new_page()
    await sign_in(page, api.base_url, f"/console/users?user={USER}", "tok-support", shots / "login.png")

    assert page.url.endswith(f"/console/users?user={USER}")
    await expect(page.locator("#available")).to_have_text("235.50 ₽")
    await expect(page.locator("#reserved")).to_have_text("5.00 ₽")
    # every reservation with its state and deadline: the recognized one and the open one
    await expect(page.locator("#reservations tbody tr")).to_have_count(2)
    await expect(page.locator("#reservations")).to_contain_text("Подъём")
    await expect(page.locator("#reservations .status-reserved")).to_have_text("В резерве")
    await expect(page.locator("#reservations .status-recognized")).to_have_text("Списан")

    # page 1 of 2, newest first; the descriptions are the API's
    await expect(page.locator("#history tbody tr")).to_have_count(20)
    await expect(page.locator("#page-number")).to_have_text("Страница 1")
    first_ids = await page.locator("#history tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert first_ids == sorted(first_ids, key=int, reverse=True)
    await expect(page.locator("#history")).to_contain_text("Списание 12.50 ₽ за услугу «Продвижение», заказ 42")

    # a comment is text, never markup: no script ran, none was inserted
    await expect(page.locator("#history td.comment", has_text="window.__pwned")).to_have_text(SCRIPT_COMMENT)
    assert await page.evaluate("() => window.__pwned") is None
    assert await page.locator("script").count() == 0

    # next, previous: keyset pages with no item repeated or skipped
    await page.get_by_role("link", name="Следующая страница").click()
    await expect(page.locator("#page-number")).to_have_text("Страница 2")
    second_ids = await page.locator("#history tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert len(second_ids) == 6 and not set(first_ids) & set(second_ids)
    assert await page.locator("#next").count() == 0
    await page.screenshot(path=str(shots / "user.png"), full_page=True)
    shared_link = page.url
    assert "tok-" not in shared_link and "cursor=" in shared_link
    await page.get_by_role("link", name="Предыдущая страница").click()
    await expect(page.locator("#page-number")).to_have_text("Страница 1")
    assert await page.locator("#history tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)") == first_ids

    # sort by amount, both orders
    await page.locator("#sort-amount").click()
    await expect(page.locator("#sort-amount")).to_contain_text("↓")
    values = amounts(await column(page, "td.amount"))
    assert values == sorted(values, reverse=True) and values[0] == 3000
    await page.locator("#sort-amount").click()
    await expect(page.locator("#sort-amount")).to_contain_text("↑")
    values = amounts(await column(page, "td.amount"))
    assert values == sorted(values) and values[0] == 100

    # filter by type, with the keyboard-reachable form
    await page.get_by_label("Списание").check()
    await page.get_by_label("Резерв", exact=True).check()
    await page.get_by_role("button", name="Применить").click()
    await expect(page.locator("#history tbody tr")).to_have_count(3)
    assert set(await column(page, "td .tag")) == {"Списание", "Резерв"}

    # the shared link opens the same page in another signed-in browser
    other = await context.new_page()
    await other.goto(shared_link)
    await expect(other.locator("#page-number")).to_have_text("Страница 2")

    # English by the switch
    await page.get_by_role("link", name="English").click()
    await expect(page.locator("#history")).to_contain_text("Charge of 12.50 RUB for service “Продвижение”, order 42")
    await expect(page.locator("html")).to_have_attribute("lang", "en")

    phone = await browser.new_context(viewport=PHONE, locale="ru-RU", storage_state=await context.storage_state())
    small = await phone.new_page()
    await small.goto(f"{api.base_url}/console/users?user={USER}&lang=ru")
    await expect(small.locator("#history tbody tr").first).to_be_visible()
    width = await small.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # no sideways scrolling on a phone
    await small.screenshot(path=str(shots / "user-phone.png"), full_page=False)
    await phone.close()

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    await context.close()


async def test_accounting_downloads_the_report(browser: Browser, api: Api, ctx: Context, shots: Path) -> None:
    require_read_side(ctx)
    month = await seed(api, ctx)
    context = await browser.new_context(viewport=LAPTOP, locale="ru-RU", accept_downloads=True)
    page = await context.new_page()
    await sign_in(page, api.base_url, "/console", "tok-accounting")
    await expect(page.get_by_role("link", name="Отчёты").first).to_be_visible()
    assert await page.get_by_role("link", name="Пользователи").count() == 0
    await page.get_by_role("link", name="Отчёты").first.click()

    await page.get_by_label("Месяц").fill(month)
    await page.get_by_role("button", name="Показать").click()
    await expect(page.locator("table.totals tbody tr")).to_have_count(1)
    await expect(page.locator("table.totals tbody")).to_contain_text("Продвижение")
    await expect(page.locator("table.totals tfoot .total")).to_have_text("12.50 ₽")
    await page.screenshot(path=str(shots / "reports.png"), full_page=True)

    async with page.expect_download() as waiting:
        await page.get_by_role("link", name="Скачать CSV").click()
    download = await waiting.value
    content = Path(await download.path()).read_text(encoding="utf-8-sig")
    lines = [line for line in content.splitlines() if line]
    assert lines[-1] == "Продвижение;12.50"
    assert "Подъём" not in content  # reserved, never charged
    await context.close()


async def test_wrong_role_sees_403(browser: Browser, api: Api, ctx: Context, shots: Path) -> None:
    context = await browser.new_context(viewport=LAPTOP, locale="ru-RU")
    page = await context.new_page()
    await sign_in(page, api.base_url, "/console", "tok-payments")
    await expect(page.locator("p.empty")).to_have_text("Для ваших ролей в консоли нет разделов.")
    await page.screenshot(path=str(shots / "home-no-sections.png"))
    for path, role in (("/console/users?user=1", "support"), ("/console/reports", "accounting")):
        response = await page.goto(api.base_url + path)
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", name="Доступ запрещён")).to_be_visible()
        await expect(page.get_by_role("alert")).to_contain_text(role)
    await page.screenshot(path=str(shots / "forbidden.png"))
    await context.close()


async def test_unknown_user_and_wrong_token_states(browser: Browser, api: Api, ctx: Context, shots: Path) -> None:
    context = await browser.new_context(viewport=LAPTOP, locale="en-US")
    page: Any = await context.new_page()
    await page.goto(api.base_url + "/console/login")
    await page.get_by_label("API token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in with the token").click()
    await expect(page.get_by_role("alert")).to_have_text("Unknown token.")
    await page.get_by_label("API token").fill("tok-support")
    await page.get_by_role("button", name="Sign in with the token").click()
    await page.get_by_role("link", name="Users").first.click()
    await page.get_by_label("User ID").fill("777")
    await page.get_by_label("User ID").press("Enter")
    await expect(page.get_by_role("alert")).to_have_text("User 777 has no account.")
    await page.screenshot(path=str(shots / "unknown-user.png"))
    await context.close()


async def test_a_bidi_override_in_a_comment_is_shown_as_a_visible_mark(
    browser: Browser, api: Api, ctx: Context
) -> None:
    require_read_side(ctx)
    comment = "refund \u202eexe.txt"  # obeyed, the agent would read "refund txt.exe"
    r = await api.post("/v1/deposits", {"user_id": USER, "amount": "1.00", "comment": comment}, token="tok-payments")
    assert r.status == 201, r.body
    await ctx.projector.drain()
    context = await browser.new_context(viewport=LAPTOP, locale="ru-RU")
    page = await context.new_page()
    await sign_in(page, api.base_url, f"/console/users?user={USER}", "tok-support")
    cell = page.locator("#history td.comment bdi", has_text="refund")
    mark = cell.locator(".cc")
    await expect(mark).to_be_visible()
    await expect(mark).to_have_text("⟨U+202E⟩")
    await expect(cell).to_have_text("refund ⟨U+202E⟩exe.txt")
    assert "\u202e" not in await cell.inner_text()
    first, last = await cell.evaluate(
        """bdi => [0, 6].map(i => {  // where "exe.txt"'s first and last letters are drawn
            const range = document.createRange();
            range.setStart(bdi.lastChild, i); range.setEnd(bdi.lastChild, i + 1);
            return range.getBoundingClientRect().left;
        })"""
    )
    assert first < last  # left to right, as typed: an obeyed U+202E would draw "txt.exe"
    await context.close()


async def test_a_person_signs_in_with_name_and_password_and_admin_sees_the_visit_audited(
    browser: Browser, api: Api, ctx: Context
) -> None:
    await Accounts(ctx.redis, ctx.ledger.keys).add("anna", ["support"], "a long password 1")
    assert (await api.deposit(USER, "3.00")).status == 201
    context = await browser.new_context(viewport=LAPTOP, locale="en-US")
    page: Any = await context.new_page()
    await page.goto(api.base_url + f"/console/users?user={USER}")
    await page.get_by_label("Name").fill("anna")
    await page.get_by_label("Password").fill("a long password 1")
    await page.get_by_label("Password").press("Enter")  # keyboard only
    await expect(page.locator(".principal")).to_contain_text("Signed in as anna")
    await expect(page.locator("#balance-h")).to_be_visible()
    await context.close()

    admin = await browser.new_context(viewport=LAPTOP, locale="ru-RU")  # Russian, as sign_in() expects
    page = await admin.new_page()
    await sign_in(page, api.base_url, "/console", "tok-admin")
    await page.get_by_role("link", name="Журнал").first.click()
    await expect(page.get_by_role("heading", name="Журнал доступа")).to_be_visible()
    row = page.locator("#audit tbody tr").first
    await expect(row).to_contain_text("anna (сотрудник)")
    await expect(row).to_contain_text(str(USER))
    await expect(row).to_contain_text("/console/users")
    await admin.close()
