"""Hostile input over real HTTP: every malformed request gets its 4xx problem+json and changes nothing in Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from tornado.simple_httpclient import HTTPStreamClosedError

from billing.bootstrap import Context
from billing.core.config import Settings
from tests.support.api import Api, problem
from tests.support.state import changed_keys, outbox_entries, redis_state

JSON = "application/json"
BIG = 2**63
RESV = {"user_id": 1, "service_id": 7, "order_id": 1}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background projector here: the outbox keeps every entry, so a snapshot shows any write at all."""
    return settings.model_copy(update={"projector_enabled": False})


@dataclass(frozen=True)
class Case:
    """One malformed request and the answer it must get."""

    id: str
    body: bytes | None
    status: int
    code: str
    path: str = "/v1/deposits"
    method: str = "POST"
    token: str | None = "tok-payments"
    content_type: str = JSON
    error_field: str | None = None  # the field the first validation error must name
    headers: dict[str, str] = field(default_factory=dict)


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def dep(**fields: Any) -> bytes:
    """A deposit body: user 1, 1.00, with fields replaced or added (None values are kept as JSON null)."""
    return orjson.dumps({"user_id": 1, "amount": "1.00", **fields})


def dep_amount(literal: str) -> bytes:
    """A deposit body whose amount is this exact JSON literal (numbers orjson could not write exactly)."""
    return raw('{"user_id": 1, "amount": ' + literal + "}")


def reserve(**fields: Any) -> bytes:
    return orjson.dumps({**RESV, "order_id": 2, "amount": "1.00", **fields})


def bad(case_id: str, body: bytes, field_name: str | None = None, **kwargs: Any) -> Case:
    return Case(case_id, body, 400, "validation_error", error_field=field_name, **kwargs)


def batch_ops(count: int) -> bytes:
    return orjson.dumps({"operations": [{"op": "deposit", "user_id": 1, "amount": "1.00"}] * count})


CASES: list[Case] = [
    # ---- JSON syntax ----
    Case("json-truncated", b'{"user_id": 1, "amount": "1.00"', 400, "invalid_json"),
    Case("json-trailing-garbage", b'{"user_id": 1, "amount": "1.00"} {}', 400, "invalid_json"),
    Case("json-empty-body", b"", 400, "invalid_json"),
    Case("json-single-quotes", b"{'user_id': 1, 'amount': '1.00'}", 400, "invalid_json"),
    Case("json-trailing-comma", b'{"user_id": 1, "amount": "1.00",}', 400, "invalid_json"),
    Case("json-invalid-utf8", b'{"user_id": 1, "amount": "1.00", "comment": "\xff"}', 400, "invalid_json"),
    Case("json-utf8-bom", b'\xef\xbb\xbf{"user_id": 1, "amount": "1.00"}', 400, "invalid_json"),
    Case("json-deep-nesting", b"[" * 20000 + b"]" * 20000, 400, "invalid_json"),
    Case("json-nan-literal", dep_amount("NaN"), 400, "invalid_json"),
    Case("json-infinity-literal", dep_amount("Infinity"), 400, "invalid_json"),
    Case("json-minus-infinity-literal", dep_amount("-Infinity"), 400, "invalid_json"),
    # ---- not an object ----
    bad("not-object-array", b'[{"user_id": 1, "amount": "1.00"}]', "body"),
    bad("not-object-string", b'"deposit"', "body"),
    bad("not-object-null", b"null", "body"),
    bad("not-object-number", b"1", "body"),
    # ---- fields ----
    bad("unknown-field", dep(currency="RUB"), "currency"),
    bad("unknown-field-surrogate-name", raw('{"user_id": 1, "amount": "1.00", "\\ud800": 1}')),
    bad("missing-amount", b'{"user_id": 1}', "amount"),
    bad("missing-user-id", b'{"amount": "1.00"}', "user_id"),
    bad("empty-object", b"{}"),
    # ---- types ----
    bad("user-id-string", dep(user_id="1"), "user_id"),
    bad("user-id-fraction", raw('{"user_id": 1.5, "amount": "1.00"}'), "user_id"),  # 1.0 is the integer 1 (JSON Schema)
    bad("user-id-bool", dep(user_id=True), "user_id"),
    bad("user-id-null", dep(user_id=None), "user_id"),
    bad("user-id-array", dep(user_id=[1]), "user_id"),
    bad("amount-bool", dep(amount=True), "amount"),
    bad("amount-null", dep(amount=None), "amount"),
    bad("amount-array", dep(amount=["1.00"]), "amount"),
    bad("amount-object", dep(amount={"value": "1.00"}), "amount"),
    bad("comment-number", dep(comment=5), "comment"),
    # ---- ids ----
    bad("user-id-zero", dep(user_id=0), "user_id"),
    bad("user-id-negative", dep(user_id=-1), "user_id"),
    bad("user-id-2-pow-63", raw(f'{{"user_id": {BIG}, "amount": "1.00"}}'), "user_id"),
    bad("user-id-huge", raw('{"user_id": 1' + "0" * 40 + ', "amount": "1.00"}'), "user_id"),
    bad("user-id-5000-digits", raw('{"user_id": ' + "9" * 5000 + ', "amount": "1.00"}'), "user_id"),
    bad("service-id-zero", reserve(service_id=0), "service_id", path="/v1/reservations", token="tok-orders"),
    bad(
        "order-id-2-pow-63",
        raw(f'{{"user_id": 1, "service_id": 7, "order_id": {BIG}, "amount": "1.00"}}'),
        "order_id",
        path="/v1/reservations/recognize",
        token="tok-orders",
    ),
    bad(
        "transfer-to-self",
        orjson.dumps({"from_user_id": 1, "to_user_id": 1, "amount": "1.00"}),
        path="/v1/transfers",
    ),
    # ---- amounts ----
    bad("amount-3-decimals-string", dep(amount="1.005"), "amount"),
    bad("amount-3-decimals-number", dep_amount("1.005"), "amount"),
    bad("amount-31-significant-digits", dep_amount("1.000000000000000000000000000001"), "amount"),
    bad("amount-negative-string", dep(amount="-1.00"), "amount"),
    bad("amount-negative-number", dep_amount("-1"), "amount"),
    bad("amount-zero-string", dep(amount="0"), "amount"),
    bad("amount-zero-number", dep_amount("0"), "amount"),
    bad("amount-zero-decimals", dep(amount="0.00"), "amount"),
    bad("amount-minus-zero", dep_amount("-0.0"), "amount"),
    bad("amount-exponent-huge", dep_amount("1e400"), "amount"),
    bad("amount-exponent-tiny", dep_amount("1e-400"), "amount"),
    bad("amount-exponent-extreme", dep_amount("1E-999999999"), "amount"),
    bad("amount-exponent-in-string", dep(amount="1e2"), "amount"),
    bad("amount-above-limit-string", dep(amount="1000000000.01"), "amount"),
    bad("amount-above-limit-number", dep_amount("1000000000.01"), "amount"),
    bad("amount-above-limit-exponent", dep_amount("1E+10"), "amount"),
    bad("amount-above-limit-integer", dep_amount("1000000001"), "amount"),
    bad("amount-5000-digits", dep_amount("9" * 5000), "amount"),
    bad("amount-5000-digits-negative", dep_amount("-" + "9" * 5000), "amount"),
    bad("amount-empty-string", dep(amount=""), "amount"),
    bad("amount-leading-space", dep(amount=" 1.00"), "amount"),
    bad("amount-trailing-space", dep(amount="1.00 "), "amount"),
    bad("amount-plus-sign", dep(amount="+1.00"), "amount"),
    bad("amount-comma", dep(amount="1,00"), "amount"),
    bad("amount-thousands-separator", dep(amount="1 000.00"), "amount"),
    bad("amount-trailing-dot", dep(amount="1."), "amount"),
    bad("amount-leading-dot", dep(amount=".50"), "amount"),
    bad("amount-arabic-digits", dep(amount="\u0661\u0662"), "amount"),
    bad("amount-fullwidth-digits", dep(amount="\uff11"), "amount"),
    bad("amount-nan-string", dep(amount="NaN"), "amount"),
    bad("amount-hex", dep(amount="0x10"), "amount"),
    bad("amount-very-long-string", dep(amount="1" * 60000), "amount"),
    # ---- exact grammar: whitespace, newlines, non-ASCII digits (int() and Decimal() would take them) ----
    bad("amount-trailing-newline", dep(amount="1.5\n"), "amount"),  # was deposited as 1.05
    bad("amount-large-trailing-newline", dep(amount="999999999.5\n"), "amount"),  # was 999999999.05
    bad("amount-leading-newline", dep(amount="\n1.50"), "amount"),
    bad("amount-trailing-crlf", dep(amount="1.50\r\n"), "amount"),
    bad("amount-trailing-tab", dep(amount="1.50\t"), "amount"),
    bad("amount-no-break-space", dep(amount="1.50\u00a0"), "amount"),
    bad("amount-line-separator", dep(amount="1.50\u2028"), "amount"),
    bad("amount-superscript-digit", dep(amount="1\u00b2"), "amount"),
    bad("amount-fullwidth-fraction", dep(amount="1.\uff15"), "amount"),
    bad("amount-persian-digits", dep(amount="\u06f1\u06f2.50"), "amount"),
    bad("amount-underscore", dep(amount="1_000"), "amount"),
    bad("user-id-string-with-newline", dep(user_id="1\n"), "user_id"),
    bad("user-id-fullwidth-string", dep(user_id="\uff11"), "user_id"),
    bad("balance-id-trailing-newline", None, "user_id", path="/v1/users/1%0A/balance", method="GET"),
    bad("balance-id-leading-space", None, "user_id", path="/v1/users/%201/balance", method="GET"),
    bad("balance-id-trailing-space", None, "user_id", path="/v1/users/1%20/balance", method="GET"),
    bad("balance-id-fullwidth", None, "user_id", path="/v1/users/%EF%BC%91/balance", method="GET"),
    bad("balance-id-superscript", None, "user_id", path="/v1/users/%C2%B9/balance", method="GET"),
    bad(
        "history-id-trailing-newline",
        None,
        "user_id",
        path="/v1/users/1%0A/transactions",
        method="GET",
        token="tok-support",
    ),
    bad(
        "catalog-id-trailing-newline",
        b'{"name": "A"}',
        "service_id",
        path="/v1/services/7%0A",
        method="PUT",
        token="tok-orders",
    ),
    bad(
        "reservation-lookup-id-leading-space",
        None,
        "user_id",
        path="/v1/reservations?user_id=%201&service_id=7&order_id=1",
        method="GET",
        token="tok-orders",
    ),
    bad(
        "reservation-lookup-id-trailing-newline",
        None,
        "order_id",
        path="/v1/reservations?user_id=1&service_id=7&order_id=1%0A",
        method="GET",
        token="tok-orders",
    ),
    bad(
        "reservation-lookup-id-twice",
        None,
        "user_id",
        path="/v1/reservations?user_id=2&user_id=1&service_id=7&order_id=1",
        method="GET",
        token="tok-orders",
    ),
    *(
        bad(
            f"history-{name}",
            None,
            field_name,
            path=f"/v1/users/1/transactions?{query}",
            method="GET",
            token="tok-support",
        )
        for name, field_name, query in [
            ("limit-fullwidth", "limit", "limit=%EF%BC%91%EF%BC%90"),
            ("limit-arabic-indic", "limit", "limit=%D9%A1"),
            ("limit-trailing-newline", "limit", "limit=10%0A"),
            ("limit-leading-space", "limit", "limit=%2010"),
            ("from-trailing-newline", "from", "from=2026-01-01T00:00:00.000Z%0A"),
            ("to-trailing-newline", "to", "to=2026-01-01T00:00:00.000Z%0A"),
            ("to-leading-space", "to", "to=%202026-01-01T00:00:00.000Z"),
            ("type-trailing-newline", "type", "type=deposit%0A"),
            ("type-space-after-comma", "type", "type=deposit,%20charge"),
            ("sort-trailing-space", "sort", "sort=amount%20"),
        ]
    ),
    *(
        bad(
            f"report-{name}",
            None,
            field_name,
            path=f"/v1/reports/revenue?{query}",
            method="GET",
            token="tok-accounting",
        )
        for name, field_name, query in [
            ("month-leading-space", "month", "month=%202026-11"),
            ("month-trailing-newline", "month", "month=2026-11%0A"),
            ("month-fullwidth", "month", "month=%EF%BC%92026-11"),
            ("bom-trailing-space", "bom", "month=2026-11&bom=1%20"),
        ]
    ),
    bad("idempotency-key-non-ascii", dep(), "Idempotency-Key", headers={"Idempotency-Key": "k\u00e9y"}),
    bad("idempotency-key-inner-tab", dep(), "Idempotency-Key", headers={"Idempotency-Key": "a\tb"}),
    bad("idempotency-key-inner-space", dep(), "Idempotency-Key", headers={"Idempotency-Key": "a b"}),
    # ---- comments and names ----
    bad("comment-too-long", dep(comment="x" * 501), "comment"),
    bad("comment-nul", dep(comment="a\u0000b"), "comment"),
    bad("comment-newline", dep(comment="line\nbreak"), "comment"),
    bad("comment-escape-sequence", dep(comment="\u001b[31mred"), "comment"),
    bad("comment-c1-control", dep(comment="a\u0085b"), "comment"),
    bad("comment-lone-high-surrogate", raw('{"user_id": 1, "amount": "1.00", "comment": "a\\ud800b"}'), "comment"),
    bad("comment-lone-low-surrogate", raw('{"user_id": 1, "amount": "1.00", "comment": "\\udfff"}'), "comment"),
    bad("service-name-empty", reserve(service_name=""), "service_name", path="/v1/reservations", token="tok-orders"),
    bad(
        "service-name-too-long",
        reserve(service_name="n" * 201),
        "service_name",
        path="/v1/reservations",
        token="tok-orders",
    ),
    bad(
        "service-name-control",
        reserve(service_name="Promo\u0007"),
        "service_name",
        path="/v1/reservations",
        token="tok-orders",
    ),
    bad("catalog-name-empty", b'{"name": ""}', "name", path="/v1/services/7", method="PUT", token="tok-orders"),
    bad(
        "catalog-unknown-field", b'{"name": "A", "x": 1}', "x", path="/v1/services/7", method="PUT", token="tok-orders"
    ),
    bad("catalog-id-zero", b'{"name": "A"}', "service_id", path="/v1/services/0", method="PUT", token="tok-orders"),
    # ---- reads with bad ids ----
    bad("balance-id-letters", None, "user_id", path="/v1/users/abc/balance", method="GET"),
    bad("balance-id-zero", None, "user_id", path="/v1/users/0/balance", method="GET"),
    bad("balance-id-2-pow-63", None, "user_id", path=f"/v1/users/{BIG}/balance", method="GET"),
    bad("balance-id-negative", None, "user_id", path="/v1/users/-1/balance", method="GET"),
    bad(
        "reservation-lookup-bad-id",
        None,
        "order_id",
        path="/v1/reservations?user_id=1&service_id=7&order_id=x",
        method="GET",
        token="tok-orders",
    ),
    # ---- media type, size ----
    Case("content-type-text", dep(), 415, "unsupported_media_type", content_type="text/plain"),
    Case("content-type-form", dep(), 415, "unsupported_media_type", content_type="application/x-www-form-urlencoded"),
    Case("content-type-lookalike", dep(), 415, "unsupported_media_type", content_type="application/jsonp"),
    Case("body-over-64k", dep(comment="x" * 65536), 413, "payload_too_large"),
    Case("body-over-64k-whitespace", dep() + b" " * 65536, 413, "payload_too_large"),
    Case("batch-over-1m", batch_ops(30000), 413, "payload_too_large", path="/v1/batch"),
    # ---- batch envelopes ----
    bad("batch-not-a-list", b'{"operations": {"op": "deposit"}}', "operations", path="/v1/batch"),
    bad("batch-empty", b'{"operations": []}', "operations", path="/v1/batch"),
    bad("batch-over-1000", batch_ops(1001), "operations", path="/v1/batch"),
    bad("batch-missing-operations", b"{}", "operations", path="/v1/batch"),
    bad("batch-unknown-field", b'{"operations": [{"op": "deposit"}], "atomic": true}', "atomic", path="/v1/batch"),
    # ---- routes, methods, auth ----
    Case("unknown-route", dep(), 404, "not_found", path="/v1/deposit"),
    Case("unknown-route-trailing-slash", dep(), 404, "not_found", path="/v1/deposits/"),
    Case("unknown-route-no-version", dep(), 404, "not_found", path="/deposits"),
    Case("method-get-on-post-route", None, 405, "method_not_allowed", method="GET"),
    Case("method-delete", None, 405, "method_not_allowed", method="DELETE"),
    Case("method-put-on-post-route", dep(), 405, "method_not_allowed", method="PUT", path="/v1/transfers"),
    Case("method-post-on-balance", dep(), 405, "method_not_allowed", path="/v1/users/1/balance"),
    Case("no-token", dep(), 401, "unauthenticated", token=None),
    Case("unknown-token", dep(), 401, "unauthenticated", token="tok-unknown"),
    Case("token-very-long", dep(), 401, "unauthenticated", token="t" * 8000),
    Case(
        "basic-auth", dep(), 401, "unauthenticated", token=None, headers={"Authorization": "Basic dG9rLXBheW1lbnRzOg=="}
    ),
    Case("role-missing", dep(), 403, "forbidden", token="tok-orders"),
    Case("role-missing-reserve", reserve(), 403, "forbidden", token="tok-payments", path="/v1/reservations"),
]


async def seed(api: Api) -> None:
    """State worth protecting: two accounts, a reservation, a partial recognition, a catalog name."""
    assert (await api.deposit(1, "100.00")).status == 201
    assert (await api.deposit(2, "5.00")).status == 201
    r = await api.post("/v1/reservations", {**RESV, "amount": "30.00", "service_name": "Promo"}, token="tok-orders")
    assert r.status == 201, r.body
    r = await api.post("/v1/reservations", {**RESV, "order_id": 9, "amount": "10.00"}, token="tok-orders")
    assert r.status == 201, r.body
    r = await api.post("/v1/reservations/recognize", {**RESV, "order_id": 9, "amount": "4.00"}, token="tok-orders")
    assert r.status == 200, r.body


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_malformed_request_is_refused_and_changes_nothing(api: Api, ctx: Context, case: Case) -> None:
    await seed(api)
    prefix = ctx.settings.redis_prefix
    before = await redis_state(ctx.redis, prefix)
    outbox_before = await outbox_entries(ctx.redis, ctx.ledger.keys)
    totals_before = await ctx.ledger.totals()
    headers = {"Content-Type": case.content_type, **case.headers} if case.body is not None else dict(case.headers)
    r = await api.request(case.method, case.path, body=case.body, token=case.token, key="malformed", headers=headers)
    problem(r, case.status, case.code)
    if case.error_field is not None:
        assert r.json["errors"][0]["field"] == case.error_field, r.json
    assert "Idempotent-Replayed" not in r.headers
    assert changed_keys(before, await redis_state(ctx.redis, prefix)) == []
    assert await outbox_entries(ctx.redis, ctx.ledger.keys) == outbox_before
    assert await ctx.ledger.totals() == totals_before
    assert len(before) > 5  # the seed is there: a snapshot of nothing would prove nothing


async def test_there_are_many_malformed_cases() -> None:
    assert len(CASES) >= 20 and len({case.id for case in CASES}) == len(CASES)


BAD_OPERATIONS: list[dict[str, Any]] = [
    {"op": "refund", "user_id": 1, "amount": "1.00"},
    {"op": ["deposit"], "user_id": 1, "amount": "1.00"},
    {"user_id": 1, "amount": "1.00"},
    {"op": "deposit", "user_id": 1, "amount": "1.005"},
    {"op": "deposit", "user_id": 1, "amount": "1.00", "extra": True},
    {"op": "deposit", "user_id": "1", "amount": "1.00"},
    {"op": "deposit", "user_id": 1, "amount": "1.00", "idempotency_key": ""},
    {"op": "deposit", "user_id": 1, "amount": "1.00", "idempotency_key": 5},
    {"op": "deposit", "user_id": 1, "amount": "1.00", "idempotency_key": "a b"},
    {"op": "deposit", "user_id": 1, "amount": "1.00", "idempotency_key": "k" * 256},
    {"op": "transfer", "from_user_id": 1, "to_user_id": 1, "amount": "1.00"},
    {"op": "cancel", "user_id": 1, "service_id": 7, "order_id": 0},
    {"op": "reserve", **RESV, "order_id": 3, "amount": "1.00", "comment": "a\u0000"},
]


async def test_invalid_batch_operations_get_their_own_400_and_change_nothing(api: Api, ctx: Context) -> None:
    await seed(api)
    prefix = ctx.settings.redis_prefix
    before = await redis_state(ctx.redis, prefix)
    r = await api.post("/v1/batch", {"operations": BAD_OPERATIONS}, token="tok-admin")
    assert r.status == 200, r.body
    results = r.json["results"]
    assert len(results) == len(BAD_OPERATIONS)
    for result in results:
        assert result["status"] == 400 and result["body"]["code"] == "validation_error", result
    assert changed_keys(before, await redis_state(ctx.redis, prefix)) == []


async def test_batch_operation_without_the_role_gets_its_own_403(api: Api, ctx: Context) -> None:
    await seed(api)
    prefix = ctx.settings.redis_prefix
    before = await redis_state(ctx.redis, prefix)
    ops = [{"op": "reserve", **RESV, "order_id": 3, "amount": "1.00"}, {"op": "cancel", **RESV}]
    r = await api.post("/v1/batch", {"operations": ops}, token="tok-payments")
    assert [item["status"] for item in r.json["results"]] == [403, 403]
    assert {item["body"]["code"] for item in r.json["results"]} == {"forbidden"}
    assert changed_keys(before, await redis_state(ctx.redis, prefix)) == []


async def test_headers_over_the_server_limit_close_the_connection_and_change_nothing(api: Api, ctx: Context) -> None:
    """Tornado reads at most 64 KiB of headers; beyond that it drops the connection before the app sees anything."""
    await seed(api)
    prefix = ctx.settings.redis_prefix
    before = await redis_state(ctx.redis, prefix)
    try:
        r = await api.post(
            "/v1/deposits", {"user_id": 1, "amount": "1.00"}, token="tok-payments", headers={"X-Padding": "p" * 70000}
        )
    except HTTPStreamClosedError:
        pass  # the server closed the connection without an answer
    else:
        assert r.status >= 400, r.body
    assert changed_keys(before, await redis_state(ctx.redis, prefix)) == []
    assert (await api.balance(1)).status == 200  # and the server still serves


@pytest.mark.parametrize("request_id", ["r" * 201, "two words"], ids=["too-long", "not-visible-ascii"])
async def test_long_request_id_is_replaced_not_echoed(api: Api, request_id: str) -> None:
    r = await api.get("/v1/users/1/balance", token="tok-payments", headers={"X-Request-ID": request_id})
    assert r.status == 404
    assert r.headers["X-Request-ID"] != request_id and len(r.headers["X-Request-ID"]) == 32
