"""People's console accounts over HTTP: sign-in by name and password, its rate limit, and the audit log."""

from __future__ import annotations

import re
from typing import Any

import pytest

from billing.api.auth import token_digest
from billing.bootstrap import Context
from billing.console import accounts as accounts_module
from billing.console.accounts import Accounts
from billing.console.audit import PAGE_SIZE, AuditLog
from tests.support.api import Api
from tests.support.console import ConsoleClient, Page

PASSWORD = "long enough password"
ALERT = re.compile(r'role="alert">([^<]*)<')


@pytest.fixture
async def accounts(ctx: Context) -> Accounts:
    people = Accounts(ctx.redis, ctx.ledger.keys)
    await people.add("anna", ["support"], PASSWORD)
    await people.add("boris", ["accounting"], PASSWORD)
    return people


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts scrypt runs: the work a sign-in spends on a password."""
    calls: list[int] = []
    real = accounts_module._scrypt

    def counted(*args: Any) -> bytes:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(accounts_module, "_scrypt", counted)
    return calls


def alert(page: Page) -> str:
    match = ALERT.search(page.text)
    assert match, page.text
    return match.group(1)


async def audit_entries(ctx: Context) -> list[Any]:
    entries, _ = await AuditLog(ctx.redis, ctx.ledger.keys, 1000).page(size=1000)
    return entries


async def test_a_person_signs_in_and_every_page_names_them(console: ConsoleClient, accounts: Accounts) -> None:
    page = await console.sign_in_person("anna", PASSWORD, next_url="/console/users")
    assert page.status == 303 and page.headers["Location"] == "/console/users"
    for path in ("/console", "/console/users", "/console/users?user=5"):
        shown = await console.get(path)
        assert shown.status in (200, 404)
        assert '<strong class="person">anna</strong>' in shown.text
    assert (await console.get("/console/reports")).status == 403  # anna's roles: support only


async def test_wrong_password_and_unknown_name_answer_alike_and_cost_one_hash(
    console: ConsoleClient, accounts: Accounts, hashes: list[int]
) -> None:
    wrong = await console.sign_in_person("anna", PASSWORD + "!")
    assert len(hashes) == 1
    unknown = await console.sign_in_person("nobody", PASSWORD)
    assert len(hashes) == 2  # the unknown name is checked against a dummy hash
    invalid = await console.sign_in_person("NOT A NAME", PASSWORD)
    assert len(hashes) == 3
    assert wrong.status == unknown.status == invalid.status == 401
    assert alert(wrong) == alert(unknown) == alert(invalid) == "Неверное имя или пароль."
    assert "console_session" not in console.cookies
    form = {"_xsrf": wrong.xsrf, "name": "nobody", "password": PASSWORD}
    english = await console.request("POST", "/console/login?lang=en", form)
    assert english.status == 401 and alert(english) == "Wrong name or password."


async def test_the_sixth_attempt_is_refused_even_with_the_right_password(
    console: ConsoleClient, accounts: Accounts, hashes: list[int]
) -> None:
    for _ in range(5):
        assert (await console.sign_in_person("anna", "wrong password!")).status == 401
    assert len(hashes) == 5
    refused = await console.sign_in_person("anna", PASSWORD)
    assert refused.status == 429 and len(hashes) == 5  # the password was not even checked
    assert alert(refused) == "Слишком много попыток входа. Попробуйте снова через 15 мин."
    assert 840 < int(refused.headers["Retry-After"]) <= 900
    assert "console_session" not in console.cookies
    english = await console.request("POST", "/console/login?lang=en", {"_xsrf": refused.xsrf, "name": "anna"})
    assert english.status == 429 and "Too many sign-in attempts. Try again in 15 min." in english.text


async def test_failures_from_one_address_lock_every_name_and_the_token_form(
    console: ConsoleClient, accounts: Accounts, ctx: Context
) -> None:
    for name in ("anna", "boris", "nobody", "x1", "x2"):
        assert (await console.sign_in_person(name, "wrong password!")).status == 401
    assert (await console.sign_in_person("boris", PASSWORD)).status == 429
    assert (await console.sign_in("tok-admin")).status == 429
    key = ctx.ledger.keys.console_signin_failures("addr", "127.0.0.1")
    assert int(await ctx.redis.get(key)) == 5 and 0 < await ctx.redis.ttl(key) <= 900


async def test_a_success_resets_the_names_counter(console: ConsoleClient, accounts: Accounts, ctx: Context) -> None:
    name_key = ctx.ledger.keys.console_signin_failures("name", "anna")
    addr_key = ctx.ledger.keys.console_signin_failures("addr", "127.0.0.1")
    for _ in range(4):
        await console.sign_in_person("anna", "wrong password!")
    assert int(await ctx.redis.get(name_key)) == 4
    assert (await console.sign_in_person("anna", PASSWORD)).status == 303
    assert await ctx.redis.get(name_key) is None
    assert int(await ctx.redis.get(addr_key)) == 4  # the address keeps its count
    assert (await console.sign_in_person("anna", "wrong password!")).status == 401
    assert int(await ctx.redis.get(name_key)) == 1


async def test_removing_an_account_or_changing_its_password_ends_its_sessions(
    console: ConsoleClient, accounts: Accounts
) -> None:
    await console.sign_in_person("anna", PASSWORD)
    assert (await console.get("/console")).status == 200
    await accounts.set_password("anna", PASSWORD + " new")
    assert (await console.get("/console")).status == 401
    await console.sign_in_person("anna", PASSWORD + " new")
    assert (await console.get("/console")).status == 200
    assert await accounts.remove("anna")
    assert (await console.get("/console")).status == 401


async def test_each_look_at_a_users_money_is_audited_and_nothing_else(
    console: ConsoleClient, accounts: Accounts, api: Api, ctx: Context
) -> None:
    assert (await api.deposit(1, "5.00")).status == 201
    await console.sign_in("tok-support")
    for path in ("/console", "/console/users", "/console/users?user=abc", "/console/users?user=999"):
        await console.get(path)
    assert await audit_entries(ctx) == []  # no user's money was shown
    assert (await console.get("/console/users?user=1")).status == 200
    [entry] = await audit_entries(ctx)
    assert (entry.who, entry.kind, entry.page, entry.user_id) == (
        token_digest("tok-support").hex()[:12],
        "token",
        "/console/users",
        1,
    )
    assert entry.address == "127.0.0.1" and entry.time.endswith("Z")
    person = ConsoleClient(console.base_url)
    try:
        await person.sign_in_person("anna", PASSWORD)
        assert (await person.get("/console/users?user=1&sort=amount&order=asc")).status == 200
    finally:
        person.close()
    newest, older = await audit_entries(ctx)
    assert (newest.who, newest.kind, newest.user_id) == ("anna", "person", 1)
    assert older == entry
    await console.sign_in("tok-accounting")
    await console.get("/console/reports")
    assert len(await audit_entries(ctx)) == 2


async def test_only_admin_reads_the_audit_log_filtered_and_paged(
    console: ConsoleClient, accounts: Accounts, ctx: Context
) -> None:
    log = AuditLog(ctx.redis, ctx.ledger.keys, 1000)
    anna = (await accounts.get("anna")).principal()  # type: ignore[union-attr]
    boris = (await accounts.get("boris")).principal()  # type: ignore[union-attr]
    for i in range(PAGE_SIZE + 10):
        await log.record(anna if i % 2 else boris, "/console/users", 100 + i % 3, "10.0.0.1")
    assert (await console.get("/console/audit")).status == 401
    await console.sign_in("tok-support")
    page = await console.get("/console/audit")
    assert page.status == 403 and "admin" in page.text
    await console.sign_in_person("anna", PASSWORD)
    assert (await console.get("/console/audit")).status == 403

    await console.sign_in("tok-admin")
    first = await console.get("/console/audit")
    assert first.status == 200 and 'href="/console/audit"' in (await console.get("/console")).text
    rows = re.findall(r'class="who-cell"><bdi>(\w+)</bdi>', first.text)
    assert len(rows) == PAGE_SIZE and rows[0] == "anna"  # the newest: i = 59 is odd
    older = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert older
    second = await console.get(older.group(1).replace("&amp;", "&"))
    assert len(re.findall(r'class="who-cell"', second.text)) == 10 and 'rel="next"' not in second.text

    only = await console.get("/console/audit?who=boris&user=100")
    users = re.findall(r'user\?user=(\d+)">|users\?user=(\d+)"', only.text)
    assert only.status == 200 and users and all(u[1] == "100" for u in users)
    assert set(re.findall(r"<bdi>(\w+)</bdi>", only.text)) == {"boris"}
    assert len(users) == len([i for i in range(PAGE_SIZE + 10) if i % 2 == 0 and i % 3 == 0])
    assert (await console.get("/console/audit?user=abc")).status == 400
    assert (await console.get("/console/audit?before=nope")).status == 400
    assert "Записей не найдено." in (await console.get("/console/audit?who=nobody")).text


async def test_the_audit_stream_is_capped_near_its_setting(ctx: Context) -> None:
    log = AuditLog(ctx.redis, ctx.ledger.keys, 10)
    anna = (await Accounts(ctx.redis, ctx.ledger.keys).add("anna", ["support"], PASSWORD)).principal()
    for i in range(300):
        await log.record(anna, "/console/users", i + 1, "127.0.0.1")
    assert await ctx.redis.xlen(ctx.ledger.keys.console_audit()) < 300
    exported = [entry async for entry in log.since(0)]
    assert exported[-1].user_id == 300 and [e.user_id for e in exported] == sorted(e.user_id for e in exported)
