"""Idempotency-Key over real HTTP: replays, reuse, scoping, refusals that store nothing, races, TTL, batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.ledger.scripts import Idempotency
from tests.support.api import Api, Response, problem
from tests.support.state import changed_keys, outbox_entries, redis_state

# Also on `billing serve --workers 2` over a Redis Cluster (tests/support/cluster_service.py).
pytestmark = pytest.mark.cluster_server

REPLAYED = "Idempotent-Replayed"
DAY_SECONDS = 24 * 3600


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background projector here: the outbox keeps every entry, so a snapshot shows any write at all."""
    return settings.model_copy(update={"projector_enabled": False})


async def seed(api: Api) -> None:
    """User 1 with 100.00, of which 30.00 reserved for service 7, order 1; user 3 with 1.00."""
    assert (await api.deposit(1, "130.00")).status == 201
    assert (await api.deposit(3, "1.00")).status == 201
    r = await api.post(
        "/v1/reservations", {"user_id": 1, "service_id": 7, "order_id": 1, "amount": "30.00"}, token="tok-orders"
    )
    assert r.status == 201, r.body


async def snapshot(ctx: Context) -> dict[bytes, Any]:
    return await redis_state(ctx.redis, ctx.settings.redis_prefix)


def assert_same_answer(first: Response, again: Response) -> None:
    assert again.status == first.status
    assert again.json == first.json
    assert again.content_type == first.content_type
    assert REPLAYED not in first.headers
    assert again.headers.get(REPLAYED) == "true"


RESERVATION = {"user_id": 1, "service_id": 7, "order_id": 1}

# (id, path, token, body, expected status, expected problem code or None)
OPERATIONS: list[tuple[str, str, str, dict[str, Any], int, str | None]] = [
    ("deposit", "/v1/deposits", "tok-payments", {"user_id": 1, "amount": "5.00"}, 201, None),
    ("deposit-new-account", "/v1/deposits", "tok-payments", {"user_id": 50, "amount": "5.00"}, 201, None),
    ("withdrawal", "/v1/withdrawals", "tok-payments", {"user_id": 1, "amount": "5.00", "comment": "atm"}, 201, None),
    ("transfer", "/v1/transfers", "tok-payments", {"from_user_id": 1, "to_user_id": 2, "amount": "5.00"}, 201, None),
    (
        "reserve",
        "/v1/reservations",
        "tok-orders",
        {"user_id": 1, "service_id": 7, "order_id": 2, "amount": "5.00", "service_name": "Promo"},
        201,
        None,
    ),
    ("reserve-again", "/v1/reservations", "tok-orders", {**RESERVATION, "amount": "30.00"}, 200, None),
    ("recognize-partial", "/v1/reservations/recognize", "tok-orders", {**RESERVATION, "amount": "10.00"}, 200, None),
    ("recognize-full", "/v1/reservations/recognize", "tok-orders", {**RESERVATION, "amount": "30.00"}, 200, None),
    ("cancel", "/v1/reservations/cancel", "tok-orders", RESERVATION, 200, None),
    (
        "withdrawal-insufficient",
        "/v1/withdrawals",
        "tok-payments",
        {"user_id": 1, "amount": "100.01"},
        409,
        "insufficient_funds",
    ),
    (
        "withdrawal-no-account",
        "/v1/withdrawals",
        "tok-payments",
        {"user_id": 99, "amount": "1"},
        404,
        "account_not_found",
    ),
    (
        "transfer-insufficient",
        "/v1/transfers",
        "tok-payments",
        {"from_user_id": 3, "to_user_id": 1, "amount": "1.01"},
        409,
        "insufficient_funds",
    ),
    (
        "transfer-no-account",
        "/v1/transfers",
        "tok-payments",
        {"from_user_id": 99, "to_user_id": 1, "amount": "1"},
        404,
        "account_not_found",
    ),
    (
        "reserve-insufficient",
        "/v1/reservations",
        "tok-orders",
        {"user_id": 3, "service_id": 7, "order_id": 9, "amount": "2"},
        409,
        "insufficient_funds",
    ),
    (
        "reserve-conflict",
        "/v1/reservations",
        "tok-orders",
        {**RESERVATION, "amount": "31.00"},
        409,
        "reservation_conflict",
    ),
    (
        "recognize-unknown",
        "/v1/reservations/recognize",
        "tok-orders",
        {"user_id": 1, "service_id": 7, "order_id": 77, "amount": "1"},
        404,
        "reservation_not_found",
    ),
    (
        "recognize-too-much",
        "/v1/reservations/recognize",
        "tok-orders",
        {**RESERVATION, "amount": "30.01"},
        409,
        "amount_exceeds_reservation",
    ),
    (
        "cancel-unknown",
        "/v1/reservations/cancel",
        "tok-orders",
        {"user_id": 1, "service_id": 8, "order_id": 1},
        404,
        "reservation_not_found",
    ),
]


@pytest.mark.parametrize(
    ("path", "token", "body", "status", "code"), [case[1:] for case in OPERATIONS], ids=[case[0] for case in OPERATIONS]
)
async def test_replay_returns_the_first_answer_and_changes_nothing(
    api: Api, ctx: Context, path: str, token: str, body: dict[str, Any], status: int, code: str | None
) -> None:
    await seed(api)
    first = await api.post(path, body, token=token, key="key-1")
    if code is None:
        assert first.status == status, first.body
    else:
        problem(first, status, code)
    assert REPLAYED not in first.headers
    before = await snapshot(ctx)
    for _ in range(2):
        again = await api.post(path, body, token=token, key="key-1")
        assert_same_answer(first, again)
    assert changed_keys(before, await snapshot(ctx)) == []


async def test_refusal_is_replayed_even_when_it_would_now_succeed(api: Api, ctx: Context) -> None:
    await seed(api)
    body = {"user_id": 1, "amount": "150.00"}
    first = await api.post("/v1/withdrawals", body, token="tok-payments", key="w-1")
    problem(first, 409, "insufficient_funds")
    assert (await api.deposit(1, "100.00")).status == 201  # available is now 200.00
    before = await snapshot(ctx)
    again = await api.post("/v1/withdrawals", body, token="tok-payments", key="w-1")
    assert_same_answer(first, again)
    assert changed_keys(before, await snapshot(ctx)) == []
    assert (await api.balance(1)).json["available"] == "200.00"
    fresh = await api.post("/v1/withdrawals", body, token="tok-payments", key="w-2")
    assert fresh.status == 201 and REPLAYED not in fresh.headers
    assert fresh.json["balance"]["available"] == "50.00"


async def test_unknown_account_refusal_is_replayed_after_the_account_exists(api: Api) -> None:
    body = {"user_id": 5, "amount": "1.00"}
    first = await api.post("/v1/withdrawals", body, token="tok-payments", key="w-5")
    problem(first, 404, "account_not_found")
    assert (await api.deposit(5, "10.00")).status == 201
    assert_same_answer(first, await api.post("/v1/withdrawals", body, token="tok-payments", key="w-5"))
    assert (await api.balance(5)).json["available"] == "10.00"


async def test_same_key_with_another_body_or_path_is_refused_and_changes_nothing(api: Api, ctx: Context) -> None:
    await seed(api)
    body = {"user_id": 1, "amount": "5.00"}
    first = await api.post("/v1/deposits", body, token="tok-payments", key="k")
    assert first.status == 201
    before = await snapshot(ctx)
    misuses = [
        ("/v1/deposits", {"user_id": 1, "amount": "6.00"}),
        ("/v1/deposits", {"user_id": 2, "amount": "5.00"}),
        ("/v1/deposits", {"user_id": 1, "amount": "5.00", "comment": "x"}),
        ("/v1/withdrawals", body),
        ("/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "5.00"}),
    ]
    for path, other in misuses:
        r = await api.post(path, other, token="tok-payments", key="k")
        problem(r, 422, "idempotency_key_reused")
        assert REPLAYED not in r.headers
    assert changed_keys(before, await snapshot(ctx)) == []
    assert_same_answer(first, await api.post("/v1/deposits", body, token="tok-payments", key="k"))


async def test_same_request_written_another_way_is_a_replay(api: Api) -> None:
    """The fingerprint covers the validated request: key order, spacing and amount spelling do not matter."""
    first = await api.post("/v1/deposits", {"user_id": 1, "amount": "5"}, token="tok-payments", key="k")
    assert first.status == 201
    for raw in (
        b'{"amount": "5.00", "user_id": 1}',
        b'{ "user_id" : 1 , "amount" : 5 }',
        b'{"user_id":1,"amount":5.0}',
    ):
        again = await api.request("POST", "/v1/deposits", body=raw, token="tok-payments", key="k")
        assert_same_answer(first, again)
    assert (await api.balance(1)).json["available"] == "5.00"


async def test_keys_are_scoped_per_token(api: Api) -> None:
    a = await api.post("/v1/deposits", {"user_id": 1, "amount": "5.00"}, token="tok-payments", key="shared")
    b = await api.post("/v1/deposits", {"user_id": 1, "amount": "7.00"}, token="tok-payments-2", key="shared")
    c = await api.post("/v1/deposits", {"user_id": 1, "amount": "5.00"}, token="tok-admin", key="shared")
    for r in (a, b, c):
        assert r.status == 201 and REPLAYED not in r.headers
    assert (await api.balance(1)).json["available"] == "17.00"
    assert_same_answer(
        a, await api.post("/v1/deposits", {"user_id": 1, "amount": "5.00"}, token="tok-payments", key="shared")
    )
    assert_same_answer(
        b, await api.post("/v1/deposits", {"user_id": 1, "amount": "7.00"}, token="tok-payments-2", key="shared")
    )
    problem(
        await api.post("/v1/deposits", {"user_id": 1, "amount": "7.00"}, token="tok-payments", key="shared"),
        422,
        "idempotency_key_reused",
    )
    assert (await api.balance(1)).json["available"] == "17.00"


OVERSIZED = b'{"user_id": 1, "amount": "1.00"' + b" " * (64 * 1024) + b"}"

# (id, token, path, raw body, content type, expected status, code, token and path of the later valid request)
REFUSED_EARLY = [
    (
        "validation",
        "tok-payments",
        "/v1/deposits",
        b'{"user_id": 1, "amount": "-1"}',
        "application/json",
        400,
        "validation_error",
    ),
    (
        "invalid-json",
        "tok-payments",
        "/v1/deposits",
        b'{"user_id": 1, "amount": ',
        "application/json",
        400,
        "invalid_json",
    ),
    (
        "unknown-field",
        "tok-payments",
        "/v1/deposits",
        b'{"user_id": 1, "amount": "1", "x": 1}',
        "application/json",
        400,
        "validation_error",
    ),
    ("no-token", None, "/v1/deposits", b'{"user_id": 1, "amount": "1.00"}', "application/json", 401, "unauthenticated"),
    (
        "bad-token",
        "tok-nobody",
        "/v1/deposits",
        b'{"user_id": 1, "amount": "1.00"}',
        "application/json",
        401,
        "unauthenticated",
    ),
    (
        "forbidden",
        "tok-orders",
        "/v1/deposits",
        b'{"user_id": 1, "amount": "1.00"}',
        "application/json",
        403,
        "forbidden",
    ),
    ("too-large", "tok-payments", "/v1/deposits", OVERSIZED, "application/json", 413, "payload_too_large"),
    (
        "media-type",
        "tok-payments",
        "/v1/deposits",
        b'{"user_id": 1, "amount": "1.00"}',
        "text/plain",
        415,
        "unsupported_media_type",
    ),
]


@pytest.mark.parametrize(
    ("token", "path", "raw", "content_type", "status", "code"),
    [case[1:] for case in REFUSED_EARLY],
    ids=[case[0] for case in REFUSED_EARLY],
)
async def test_request_refused_before_the_money_stores_nothing_under_its_key(
    api: Api, ctx: Context, token: str | None, path: str, raw: bytes, content_type: str, status: int, code: str
) -> None:
    await seed(api)
    before = await snapshot(ctx)
    r = await api.request("POST", path, body=raw, token=token, key="early", headers={"Content-Type": content_type})
    problem(r, status, code)
    assert REPLAYED not in r.headers
    assert changed_keys(before, await snapshot(ctx)) == []
    # The same key later with a valid request runs for real (from the same token wherever it has the role).
    if token == "tok-orders":
        later = await api.post(
            "/v1/reservations", {**RESERVATION, "order_id": 5, "amount": "1.00"}, token=token, key="early"
        )
    else:
        later = await api.post("/v1/deposits", {"user_id": 1, "amount": "2.00"}, token="tok-payments", key="early")
    assert later.status == 201, later.body
    assert REPLAYED not in later.headers


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "cl\u00e9", "two words", "tab\there"],
    ids=["empty", "too-long", "non-ascii", "space", "tab"],
)
async def test_invalid_idempotency_key_header_is_refused(api: Api, ctx: Context, key: str) -> None:
    await seed(api)
    before = await snapshot(ctx)
    r = await api.post(
        "/v1/deposits", {"user_id": 1, "amount": "1.00"}, token="tok-payments", headers={"Idempotency-Key": key}
    )
    problem(r, 400, "validation_error")
    assert r.json["errors"][0]["field"] == "Idempotency-Key"
    assert changed_keys(before, await snapshot(ctx)) == []


@pytest.mark.parametrize("key", ["", "x" * 256, "two words"], ids=["empty", "too-long", "space"])
async def test_invalid_idempotency_key_header_on_batch_is_refused(api: Api, ctx: Context, key: str) -> None:
    await seed(api)
    before = await snapshot(ctx)
    ops = {"operations": [{"op": "deposit", "user_id": 1, "amount": "1.00"}]}
    r = await api.post("/v1/batch", ops, token="tok-payments", headers={"Idempotency-Key": key})
    problem(r, 400, "validation_error")
    assert changed_keys(before, await snapshot(ctx)) == []


async def test_control_character_in_a_header_is_refused_by_the_http_parser(api: Api, ctx: Context) -> None:
    """Tornado's HTTP/1 parser answers a bare 400 before the app runs: no problem+json there, nothing changed."""
    await seed(api)
    before = await snapshot(ctx)
    r = await api.post(
        "/v1/deposits", {"user_id": 1, "amount": "1.00"}, token="tok-payments", headers={"Idempotency-Key": "a\x7fb"}
    )
    assert r.status == 400
    assert changed_keys(before, await snapshot(ctx)) == []


@pytest.mark.parametrize("key", ["!", "~" * 255, "550e8400-e29b-41d4-a716-446655440000"], ids=["one", "255", "uuid"])
async def test_valid_idempotency_key_edges(api: Api, key: str) -> None:
    first = await api.post("/v1/deposits", {"user_id": 1, "amount": "1.00"}, token="tok-payments", key=key)
    assert first.status == 201
    assert_same_answer(
        first, await api.post("/v1/deposits", {"user_id": 1, "amount": "1.00"}, token="tok-payments", key=key)
    )


async def test_parallel_requests_with_one_key_apply_exactly_once(api: Api, ctx: Context) -> None:
    await seed(api)
    before_totals = await ctx.ledger.totals()
    outbox_before = await outbox_entries(ctx.redis, ctx.ledger.keys)
    body = {"from_user_id": 1, "to_user_id": 2, "amount": "10.00"}
    answers = await asyncio.gather(
        *(api.post("/v1/transfers", body, token="tok-payments", key="race") for _ in range(32))
    )
    assert {r.status for r in answers} == {201}
    assert len({r.body for r in answers}) == 1  # byte-identical bodies
    assert sum(REPLAYED not in r.headers for r in answers) == 1
    assert sum(r.headers.get(REPLAYED) == "true" for r in answers) == 31
    assert (await api.balance(1)).json == {"user_id": 1, "available": "90.00", "reserved": "30.00"}
    assert (await api.balance(2)).json == {"user_id": 2, "available": "10.00", "reserved": "0.00"}
    moved = {"transfers_in": 1000, "transfers_out": 1000}
    assert await ctx.ledger.totals() == {**before_totals, **{k: before_totals.get(k, 0) + v for k, v in moved.items()}}
    assert await outbox_entries(ctx.redis, ctx.ledger.keys) == outbox_before + 2  # one in each user's partition


async def test_parallel_deposits_with_one_key_apply_exactly_once(api: Api, ctx: Context) -> None:
    answers = await asyncio.gather(
        *(api.post("/v1/deposits", {"user_id": 4, "amount": "3.33"}, token="tok-payments", key="d") for _ in range(32))
    )
    assert {r.status for r in answers} == {201}
    assert len({r.body for r in answers}) == 1
    assert sum(REPLAYED not in r.headers for r in answers) == 1
    assert (await api.balance(4)).json["available"] == "3.33"
    assert (await ctx.ledger.totals())["deposited"] == 333


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/deposits", {"user_id": 1, "amount": "1.00"}, 201),
        ("/v1/withdrawals", {"user_id": 1, "amount": "1000.00"}, 409),
    ],
    ids=["success", "refusal"],
)
async def test_idempotency_record_is_kept_at_least_a_day(
    api: Api, ctx: Context, path: str, body: dict[str, Any], status: int
) -> None:
    await seed(api)
    assert (await api.post(path, body, token="tok-payments", key="ttl")).status == status
    scope = ctx.auth.authenticate("Bearer tok-payments").name
    name = ctx.ledger.keys.idempotency(Idempotency(scope=scope, key="ttl"))
    assert await ctx.redis.exists(name) == 1
    ttl = await ctx.redis.ttl(name)
    assert ttl >= DAY_SECONDS, ttl


async def test_batch_key_and_header_are_interchangeable(api: Api, ctx: Context) -> None:
    await seed(api)
    body = {"user_id": 1, "amount": "5.00"}
    by_header = await api.post("/v1/deposits", body, token="tok-payments", key="h")
    assert by_header.status == 201
    before = await snapshot(ctx)
    batch = await api.post(
        "/v1/batch",
        {
            "operations": [
                {"op": "deposit", "idempotency_key": "h", **body},
                {"op": "deposit", "idempotency_key": "h", "user_id": 1, "amount": "6.00"},
                {"op": "withdrawal", "idempotency_key": "h", **body},
            ]
        },
        token="tok-payments",
    )
    assert batch.status == 200
    replay, other_body, other_op = batch.json["results"]
    assert replay == {"status": 201, "body": by_header.json, "replayed": True}
    assert other_body["status"] == 422 and other_body["body"]["code"] == "idempotency_key_reused"
    assert other_op["status"] == 422 and other_op["body"]["code"] == "idempotency_key_reused"
    assert changed_keys(before, await snapshot(ctx)) == []

    # The other way round: first in a batch, then replayed by the endpoint with the header.
    batch = await api.post(
        "/v1/batch",
        {
            "operations": [
                {"op": "withdrawal", "idempotency_key": "b", "user_id": 1, "amount": "1000.00"},
                {"op": "transfer", "idempotency_key": "t", "from_user_id": 1, "to_user_id": 2, "amount": "1.00"},
            ]
        },
        token="tok-payments",
    )
    refused, transfer = batch.json["results"]
    assert refused["status"] == 409 and "replayed" not in refused
    assert transfer["status"] == 201 and "replayed" not in transfer
    before = await snapshot(ctx)
    again = await api.post("/v1/withdrawals", {"user_id": 1, "amount": "1000.00"}, token="tok-payments", key="b")
    assert again.status == 409 and again.json == refused["body"] and again.headers.get(REPLAYED) == "true"
    again = await api.post(
        "/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "1.00"}, token="tok-payments", key="t"
    )
    assert again.status == 201 and again.json == transfer["body"] and again.headers.get(REPLAYED) == "true"
    assert changed_keys(before, await snapshot(ctx)) == []


async def test_batch_keys_are_scoped_per_token_and_repeat_within_one_batch(api: Api) -> None:
    op = {"op": "deposit", "idempotency_key": "bk", "user_id": 1, "amount": "2.00"}
    first = await api.post("/v1/batch", {"operations": [op, op]}, token="tok-payments")
    a, b = first.json["results"]
    assert a["status"] == 201 and "replayed" not in a
    assert b == {**a, "replayed": True}
    other = await api.post("/v1/batch", {"operations": [op]}, token="tok-payments-2")
    assert other.json["results"][0]["status"] == 201 and "replayed" not in other.json["results"][0]
    assert (await api.balance(1)).json["available"] == "4.00"
