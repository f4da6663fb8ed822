"""The console over plain HTTP: CSRF, CSP, cookie flags, sign-in, roles, lookup states (no browser)."""

from __future__ import annotations

import io
import logging
from http.cookies import SimpleCookie

import orjson
import pytest
from pymongo.errors import ServerSelectionTimeoutError

from billing.api.auth import Authenticator, token_digest
from billing.bootstrap import Context
from billing.infra.observability import configure_access_log
from tests.support.api import TEST_TOKENS, Api
from tests.support.console import ConsoleClient


def cookie(page, name: str):
    for raw in page.set_cookies:
        parsed = SimpleCookie(raw)
        if name in parsed:
            return parsed[name], raw
    raise AssertionError(f"no Set-Cookie for {name}: {page.set_cookies}")


async def test_pages_carry_a_strict_content_security_policy(console: ConsoleClient) -> None:
    for path in ("/console/login", "/console", "/console/static/console.css"):
        page = await console.get(path)
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in (await console.get("/console/login")).text


async def test_post_without_xsrf_token_is_refused_and_changes_nothing(console: ConsoleClient) -> None:
    await console.get("/console/login")  # has the CSRF cookie, but the form field is missing
    page = await console.post("/console/login", {"token": "tok-support"})
    assert page.status == 403
    assert "console_session" not in console.cookies
    forged = await console.post("/console/login", {"token": "tok-support", "_xsrf": "2|00000000|" + "0" * 32 + "|1"})
    assert forged.status == 403 and "console_session" not in console.cookies
    signed_in = await console.sign_in("tok-support")
    assert signed_in.status == 303
    out = await console.post("/console/logout", {})
    assert out.status == 403 and "console_session" in console.cookies


async def test_json_api_needs_no_xsrf_token(api: Api) -> None:
    response = await api.deposit(5, "1.00")
    assert response.status == 201


async def test_session_cookie_flags_and_no_token_inside(console: ConsoleClient) -> None:
    login = await console.get("/console/login")
    xsrf, raw_xsrf = cookie(login, "console_xsrf")
    assert xsrf["httponly"] and xsrf["samesite"] == "Strict" and xsrf["path"] == "/console"
    page = await console.post("/console/login", {"_xsrf": login.xsrf, "token": "tok-support", "next": "/console"})
    assert page.status == 303 and page.headers["Location"] == "/console"
    session, raw = cookie(page, "console_session")
    assert session["httponly"] and session["samesite"] == "Strict" and session["path"] == "/console"
    assert not session["secure"] and "Secure" not in raw  # plain HTTP here; see the HTTPS test
    assert "tok-support" not in raw
    assert (await console.get("/console")).status == 200


async def test_bad_token_and_missing_session_show_the_sign_in_page_with_401(console: ConsoleClient) -> None:
    page = await console.get("/console/users?user=1")
    assert page.status == 401 and 'name="token"' in page.text
    assert 'name="next" value="/console/users?user=1"' in page.text
    login = await console.get("/console/login")
    bad = await console.post("/console/login", {"_xsrf": login.xsrf, "token": "nope"})
    assert bad.status == 401 and "Неизвестный токен" in bad.text and "console_session" not in console.cookies


async def test_tampered_session_cookie_is_ignored(console: ConsoleClient) -> None:
    await console.sign_in("tok-support")
    value = console.cookies["console_session"]
    console.cookies["console_session"] = value[:-3] + ("000" if not value.endswith("000") else "111")
    assert (await console.get("/console")).status == 401


async def test_roles_are_resolved_on_every_request(console: ConsoleClient, ctx: Context) -> None:
    await console.sign_in("tok-support")
    assert (await console.get("/console/users")).status == 200
    ctx.auth = Authenticator({**TEST_TOKENS, "tok-support": ["payments"]})  # the token lost its support role
    assert (await console.get("/console/users")).status == 403
    ctx.auth = Authenticator({k: v for k, v in TEST_TOKENS.items() if k != "tok-support"})  # token removed
    assert (await console.get("/console")).status == 401


async def test_wrong_role_gets_403_page(console: ConsoleClient) -> None:
    await console.sign_in("tok-support")
    page = await console.get("/console/reports")
    assert page.status == 403 and "accounting" in page.text and "Доступ запрещён" in page.text
    home = await console.get("/console")
    assert 'href="/console/users"' in home.text and 'href="/console/reports"' not in home.text


async def test_sign_in_never_redirects_off_site(console: ConsoleClient) -> None:
    for target in ("https://evil.example/", "//evil.example/console", "/console\\@evil"):
        fresh = ConsoleClient(console.base_url)
        page = await fresh.sign_in("tok-support", next_url=target)
        fresh.close()
        assert page.status == 303 and page.headers["Location"] == "/console"


async def test_sign_out_clears_the_session(console: ConsoleClient) -> None:
    home = await console.sign_in("tok-admin")
    home = await console.get("/console")
    out = await console.post("/console/logout", {"_xsrf": home.xsrf})
    assert out.status == 303 and out.headers["Location"] == "/console/login"
    assert "console_session" not in console.cookies
    assert (await console.get("/console")).status == 401


async def test_language_by_header_query_and_cookie(console: ConsoleClient) -> None:
    await console.sign_in("tok-support")
    assert "Пользователи" in (await console.get("/console")).text
    assert "Users" in (await console.get("/console", headers={"Accept-Language": "en-GB,en;q=0.9"})).text
    assert '<html lang="en">' in (await console.get("/console?lang=en")).text
    assert '<html lang="en">' in (await console.get("/console")).text  # remembered in a cookie
    assert '<html lang="ru">' in (await console.get("/console?lang=ru")).text


async def test_user_lookup_states(console: ConsoleClient, api: Api) -> None:
    await console.sign_in("tok-support")
    bad = await console.get("/console/users?user=12x")
    assert bad.status == 400 and "целое число" in bad.text
    unknown = await console.get("/console/users?user=424242")
    assert unknown.status == 404 and "нет счёта" in unknown.text
    await api.deposit(7, "70.00")
    r = await api.post(
        "/v1/reservations",
        {"user_id": 7, "service_id": 3, "order_id": 42, "amount": "30.00", "service_name": "Продвижение"},
        token="tok-orders",
    )
    assert r.status == 201
    await api.post(
        "/v1/reservations", {"user_id": 7, "service_id": 4, "order_id": 1, "amount": "5.00"}, token="tok-orders"
    )
    await api.post("/v1/reservations/cancel", {"user_id": 7, "service_id": 4, "order_id": 1}, token="tok-orders")
    page = await console.get("/console/users?user=7")
    assert page.status == 200
    assert '<dd id="available">40.00 ₽</dd>' in page.text and '<dd id="reserved">30.00 ₽</dd>' in page.text
    assert "3 · <bdi>Продвижение</bdi>" in page.text and "30.00 ₽" in page.text
    table = page.text.split('id="reservations"')[1].split("</table>")[0]
    assert table.count("<tr>") == 3  # the header, the open reservation and the cancelled one, with their states
    assert '<td data-label="Состояние" class="status-reserved">В резерве</td>' in table
    assert '<td data-label="Состояние" class="status-cancelled">Отменён</td>' in table
    assert table.count('<td data-label="Истекает (Europe/Moscow)">') == 2


async def test_reports_store_down_is_a_clear_state(
    console: ConsoleClient, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(month: str) -> list[tuple[str, int]]:
        raise ServerSelectionTimeoutError("mongo down")

    monkeypatch.setattr(ctx.reports, "totals", down)
    await console.sign_in("tok-admin")
    page = await console.get("/console/reports?month=2026-11")
    assert page.status == 503 and "Хранилище недоступно" in page.text
    bad = await console.get("/console/reports?month=2026-13")
    assert bad.status == 400 and "ГГГГ-ММ" in bad.text


async def test_projector_lag_is_shown(console: ConsoleClient, api: Api, ctx: Context) -> None:
    class Lagging:
        async def lag(self) -> dict:
            return {"entries": 12, "oldest_age_seconds": 3.25}

    saved = ctx.projector
    ctx.projector = Lagging()
    try:
        await api.deposit(9, "1.00")
        await console.sign_in("tok-support")
        page = await console.get("/console/users?user=9")
        assert 'id="lag"' in page.text and "12" in page.text and "3.2" in page.text
    finally:
        ctx.projector = saved


async def test_cookies_are_secure_over_https(https_console: ConsoleClient) -> None:
    page = await https_console.sign_in("tok-support")
    assert page.status == 303
    session, _ = cookie(page, "console_session")
    assert session["secure"] and session["httponly"] and session["samesite"] == "Strict"


async def test_history_store_down_is_a_clear_state(console: ConsoleClient, api: Api, ctx: Context) -> None:
    class Down:
        async def page(self, user_id: int, query: dict, lang: str) -> dict:
            raise ServerSelectionTimeoutError("mongo down")

    saved = ctx.history
    ctx.history = Down()
    try:
        await api.deposit(10, "1.00")
        await console.sign_in("tok-support")
        page = await console.get("/console/users?user=10")
        assert page.status == 200 and '<dd id="available">1.00 ₽</dd>' in page.text  # Redis still answers
        assert "Хранилище недоступно" in page.text
    finally:
        ctx.history = saved


async def test_console_requests_are_logged_without_the_token(console: ConsoleClient) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("billing.access")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    configure_access_log(stream)
    try:
        await console.sign_in("tok-support", next_url="/console/users")
        await console.get("/console/users?user=1")
        for handler in logger.handlers:
            handler.flush()  # lines are gathered for a few ms before they are written
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved
    text = stream.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("GET", "/console/login", 200),
        ("POST", "/console/login", 303),
        ("GET", "/console/users", 404),
    ]
    assert lines[-1]["token"] == token_digest("tok-support").hex()[:12]
    assert "tok-support" not in text


async def test_a_refund_shows_under_its_order_in_the_history(console: ConsoleClient, api: Api, ctx: Context) -> None:
    await console.sign_in("tok-support")
    await api.deposit(8, "100.00")
    ref = {"user_id": 8, "service_id": 3, "order_id": 42}
    orders = {"token": "tok-orders"}
    await api.post("/v1/reservations", {**ref, "amount": "30.00", "service_name": "Продвижение"}, **orders)
    await api.post("/v1/reservations/recognize", {**ref, "amount": "30.00"}, **orders)
    assert (await api.post("/v1/refunds", {**ref, "amount": "10.00"}, **orders)).status == 201
    await ctx.projector.drain()
    page = await console.get("/console/users?user=8&type=refund")
    assert page.status == 200
    rows = page.text.split('id="history"')[1].split("</table>")[0].split("<tr data-id=")[1:]
    assert len(rows) == 1
    assert '<span class="tag tag-refund">Возврат за услугу</span>' in rows[0] and "10.00 ₽" in rows[0]
    assert "Возврат 10.00 ₽ за услугу «<bdi>Продвижение</bdi>», заказ 42" in rows[0]
    assert 'name="type" value="refund" checked' in page.text
    english = await console.get("/console/users?user=8&lang=en")
    assert '<span class="tag tag-refund">Refund</span>' in english.text
    assert "Refund of 10.00 RUB for service “<bdi>Продвижение</bdi>”, order 42" in english.text
