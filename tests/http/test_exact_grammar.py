"""Exact grammar over HTTP where tests/http/test_malformed.py's table does not fit: signed report links,
Accept-Language, and the console's forms. Each value is taken exactly as written or refused."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

import pytest

from billing.bootstrap import Context
from tests.support.api import Api, problem
from tests.support.console import ConsoleClient
from tests.support.state import changed_keys, redis_state


async def signed_link(api: Api) -> tuple[str, dict[str, str]]:
    link = await api.get("/v1/reports/revenue?month=2026-11", token="tok-accounting")
    assert link.status == 200, link.body
    url = urlsplit(link.json["url"])
    return url.path, {name: values[0] for name, values in parse_qs(url.query).items()}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("expires", "{} "),
        ("expires", " {}"),
        ("expires", "{}\n"),
        ("signature", "{}\n"),
        ("signature", " {}"),
        ("signature", "{}\t"),
    ],
)
async def test_signed_link_values_are_taken_exactly(api: Api, name: str, value: str) -> None:
    path, query = await signed_link(api)
    assert (
        await api.get(f"{path}?expires={query['expires']}&signature={query['signature']}", token=None)
    ).status == 200
    query[name] = value.format(query[name])
    tampered = f"{path}?expires={quote(query['expires'])}&signature={quote(query['signature'])}"
    problem(await api.get(tampered, token=None), 403, "invalid_signature")


async def test_signed_link_month_in_the_path_is_taken_exactly(api: Api) -> None:
    path, query = await signed_link(api)
    answer = await api.get(
        f"{path.replace('2026-11', '2026-11%0A')}?expires={query['expires']}&signature={query['signature']}", token=None
    )
    assert answer.status in (400, 403), answer.body
    assert answer.content_type.startswith("application/problem+json")


@pytest.mark.parametrize(
    ("header", "english"),
    [
        ("en", True),
        ("en;q=0", False),  # q=0: "not acceptable" (RFC 9110 section 12.5.4), so not English
        ("en;q=0, ru;q=0.1", False),
        ("ru;q=0", True),
        ("en;q=2", False),  # a malformed weight: the element is ignored
        ("en;q=inf", False),
    ],
)
async def test_history_language_follows_acceptable_q_values(api: Api, ctx: Context, header: str, english: bool) -> None:
    assert (await api.deposit(1, "1.00")).status == 201
    await ctx.projector.drain()
    answer = await api.get("/v1/users/1/transactions", token="tok-support", headers={"Accept-Language": header})
    assert answer.status == 200, answer.body
    description = answer.json["items"][0]["description"]
    assert description == ("Deposit of 1.00 RUB" if english else "Пополнение баланса на 1.00 ₽")


@pytest.mark.parametrize(
    "query",
    [
        "user=%2042",
        "user=42%0A",
        "user=%EF%BC%94%EF%BC%92",
        "user=42&from=%202026-01-01",
        "user=42&to=2026-01-01%0A",
        "user=42&from=20260101",
        "user=42&sort=amount%20",
    ],
)
async def test_console_user_lookup_takes_its_fields_exactly(
    console: ConsoleClient, api: Api, ctx: Context, query: str
) -> None:
    assert (await api.deposit(42, "1.00")).status == 201
    await console.sign_in("tok-support")
    assert (await console.get("/console/users?user=42")).status == 200
    page = await console.get(f"/console/users?{query}")
    assert page.status == 400, page.text
    assert '<dd id="available">' not in page.text


@pytest.mark.parametrize("month", ["%202026-11", "2026-11%0A", "2026-11%20", "%EF%BC%92026-11"])
async def test_console_report_month_is_taken_exactly(console: ConsoleClient, ctx: Context, month: str) -> None:
    await console.sign_in("tok-accounting")  # signing in writes its session key: the snapshot comes after
    assert (await console.get("/console/reports?month=2026-11")).status == 200
    before = await redis_state(ctx.redis, ctx.settings.redis_prefix)
    page = await console.get(f"/console/reports?month={month}")
    assert page.status == 400 and "ГГГГ-ММ" in page.text
    assert 'id="download"' not in page.text
    after = await redis_state(ctx.redis, ctx.settings.redis_prefix)
    # The projector publishes its watermark and creates its partitions' streams (empty, with its group) on its
    # own schedule: bookkeeping, not something the request did.
    changed = [key for key in changed_keys(before, after) if not key.endswith(b":projected")]
    assert [key for key in changed if not (key not in before and after[key] == [])] == []
