"""The money endpoints over real HTTP, on fakeredis and on a real redis-server."""

from __future__ import annotations

import pytest

from tests.support.api import Api, problem

# Also on `billing serve --workers 2` over a Redis Cluster (tests/support/cluster_service.py).
pytestmark = pytest.mark.cluster_server


async def test_deposit_creates_account_and_returns_balance_and_transaction(api: Api) -> None:
    assert (await api.balance(1)).status == 404
    r = await api.post("/v1/deposits", {"user_id": 1, "amount": "100.50", "comment": "first"}, token="tok-payments")
    assert r.status == 201
    assert r.json["balance"] == {"user_id": 1, "available": "100.50", "reserved": "0.00"}
    txn = r.json["transaction"]
    assert txn["type"] == "deposit" and txn["amount"] == "100.50" and txn["comment"] == "first"
    assert txn["available_after"] == "100.50" and txn["created_at"].endswith("Z")
    assert "100.50" in txn["description"]
    assert "Idempotent-Replayed" not in r.headers
    assert (await api.balance(1)).json == {"user_id": 1, "available": "100.50", "reserved": "0.00"}


async def test_amount_as_json_number_is_exact(api: Api) -> None:
    r = await api.request("POST", "/v1/deposits", body=b'{"user_id": 3, "amount": 1.500}', token="tok-payments")
    assert r.status == 201 and r.json["balance"]["available"] == "1.50"
    r = await api.request("POST", "/v1/deposits", body=b'{"user_id": 3, "amount": 1E+2}', token="tok-payments")
    assert r.status == 201 and r.json["balance"]["available"] == "101.50"
    r = await api.request("POST", "/v1/deposits", body=b'{"user_id": 3, "amount": 1.005}', token="tok-payments")
    problem(r, 400, "validation_error")
    assert r.json["errors"][0]["field"] == "amount"


async def test_withdrawal(api: Api) -> None:
    problem(
        await api.post("/v1/withdrawals", {"user_id": 9, "amount": "1"}, token="tok-payments"), 404, "account_not_found"
    )
    await api.deposit(9, "10.00")
    problem(
        await api.post("/v1/withdrawals", {"user_id": 9, "amount": "10.01"}, token="tok-payments"),
        409,
        "insufficient_funds",
    )
    r = await api.post("/v1/withdrawals", {"user_id": 9, "amount": "10"}, token="tok-payments")
    assert r.status == 201 and r.json["balance"]["available"] == "0.00"
    assert r.json["transaction"]["type"] == "withdrawal"


async def test_transfer_moves_money_atomically(api: Api) -> None:
    problem(
        await api.post("/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "1"}, token="tok-payments"),
        404,
        "account_not_found",
    )
    await api.deposit(1, "50.00")
    problem(
        await api.post("/v1/transfers", {"from_user_id": 1, "to_user_id": 1, "amount": "1"}, token="tok-payments"),
        400,
        "validation_error",
    )
    problem(
        await api.post("/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "50.01"}, token="tok-payments"),
        409,
        "insufficient_funds",
    )
    assert (await api.balance(2)).status == 404
    r = await api.post(
        "/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "20", "comment": "rent"}, token="tok-payments"
    )
    assert r.status == 201
    assert r.json["balance"]["available"] == "30.00"
    assert r.json["recipient_balance"] == {"user_id": 2, "available": "20.00", "reserved": "0.00"}
    assert r.json["transaction"]["type"] == "transfer_out"
    assert r.json["transaction"]["counterparty_user_id"] == 2
    assert r.json["recipient_transaction"]["type"] == "transfer_in"
    assert r.json["recipient_transaction"]["counterparty_user_id"] == 1


async def test_balance_limit_refuses_and_changes_nothing(api: Api, ctx) -> None:
    near_cap = 10_000_000_000_000_00 - 1_00  # kopecks: one ruble under the cap
    await ctx.redis.hset(ctx.ledger.keys.account(5), mapping={"available": near_cap, "reserved": 0})
    problem(await api.deposit(5, "1.01"), 409, "balance_limit_exceeded")
    assert (await api.deposit(5, "1.00")).json["balance"]["available"] == "10000000000000.00"
    await api.deposit(6, "5.00")
    problem(
        await api.post("/v1/transfers", {"from_user_id": 6, "to_user_id": 5, "amount": "0.01"}, token="tok-payments"),
        409,
        "balance_limit_exceeded",
    )
    assert (await api.balance(6)).json["available"] == "5.00"
    assert (await api.balance(5)).json["available"] == "10000000000000.00"


async def test_reserve_recognize_partial_and_cancel(api: Api) -> None:
    ref = {"user_id": 7, "service_id": 3, "order_id": 42}
    problem(await api.post("/v1/reservations", {**ref, "amount": "10"}, token="tok-orders"), 404, "account_not_found")
    await api.deposit(7, "100.00")
    problem(
        await api.post("/v1/reservations", {**ref, "amount": "100.01"}, token="tok-orders"), 409, "insufficient_funds"
    )
    r = await api.post("/v1/reservations", {**ref, "amount": "30", "service_name": "Продвижение"}, token="tok-orders")
    assert r.status == 201
    assert r.json["balance"] == {"user_id": 7, "available": "70.00", "reserved": "30.00"}
    assert r.json["reservation"]["status"] == "reserved" and r.json["reservation"]["recognized_amount"] is None
    assert r.json["transaction"]["type"] == "reserve"
    again = await api.post("/v1/reservations", {**ref, "amount": "30"}, token="tok-orders")
    assert again.status == 200 and "transaction" not in again.json
    assert again.json["balance"]["reserved"] == "30.00"
    problem(
        await api.post("/v1/reservations", {**ref, "amount": "31"}, token="tok-orders"), 409, "reservation_conflict"
    )
    problem(
        await api.post("/v1/reservations/recognize", {**ref, "amount": "30.01"}, token="tok-orders"),
        409,
        "amount_exceeds_reservation",
    )
    r = await api.post("/v1/reservations/recognize", {**ref, "amount": "25"}, token="tok-orders")
    assert r.status == 200
    assert r.json["reservation"]["status"] == "recognized" and r.json["reservation"]["recognized_amount"] == "25.00"
    assert r.json["transaction"]["type"] == "charge" and r.json["transaction"]["amount"] == "25.00"
    assert r.json["release_transaction"]["type"] == "release" and r.json["release_transaction"]["amount"] == "5.00"
    assert r.json["balance"] == {"user_id": 7, "available": "75.00", "reserved": "0.00"}
    assert "Продвижение" in r.json["transaction"]["description"]
    same = await api.post("/v1/reservations/recognize", {**ref, "amount": "25"}, token="tok-orders")
    assert same.status == 200 and "transaction" not in same.json
    problem(
        await api.post("/v1/reservations/recognize", {**ref, "amount": "20"}, token="tok-orders"),
        409,
        "reservation_closed",
    )
    problem(await api.post("/v1/reservations/cancel", ref, token="tok-orders"), 409, "reservation_closed")
    lookup = await api.get("/v1/reservations?user_id=7&service_id=3&order_id=42", token="tok-support")
    assert lookup.status == 200 and lookup.json["status"] == "recognized"
    problem(
        await api.get("/v1/reservations?user_id=7&service_id=3&order_id=43", token="tok-orders"),
        404,
        "reservation_not_found",
    )


async def test_cancel_returns_everything_once(api: Api) -> None:
    ref = {"user_id": 8, "service_id": 1, "order_id": 1}
    problem(await api.post("/v1/reservations/cancel", ref, token="tok-orders"), 404, "reservation_not_found")
    await api.deposit(8, "10.00")
    await api.post("/v1/reservations", {**ref, "amount": "4"}, token="tok-orders")
    r = await api.post("/v1/reservations/cancel", {**ref, "comment": "changed mind"}, token="tok-orders")
    assert r.status == 200 and r.json["reservation"]["status"] == "cancelled"
    assert r.json["transaction"]["type"] == "release" and r.json["transaction"]["amount"] == "4.00"
    assert r.json["balance"] == {"user_id": 8, "available": "10.00", "reserved": "0.00"}
    again = await api.post("/v1/reservations/cancel", ref, token="tok-orders")
    assert again.status == 200 and "transaction" not in again.json
    assert again.json["balance"]["available"] == "10.00"
    problem(
        await api.post("/v1/reservations/recognize", {**ref, "amount": "4"}, token="tok-orders"),
        409,
        "reservation_closed",
    )
    # an order is reserved once per service, ever
    same = await api.post("/v1/reservations", {**ref, "amount": "4"}, token="tok-orders")
    assert same.status == 200 and same.json["reservation"]["status"] == "cancelled"
    assert same.json["balance"]["available"] == "10.00"


async def test_services_catalog(api: Api) -> None:
    r = await api.put("/v1/services/5", {"name": "Доставка"}, token="tok-orders")
    assert r.status == 200 and r.json == {"service_id": 5, "name": "Доставка"}
    r = await api.get("/v1/services", token="tok-support")
    assert r.json == {"items": [{"service_id": 5, "name": "Доставка"}]}
    problem(await api.put("/v1/services/5", {"name": ""}, token="tok-orders"), 400, "validation_error")
    problem(await api.put("/v1/services/x", {"name": "a"}, token="tok-orders"), 400, "validation_error")
    problem(await api.put("/v1/services/5", {"name": "a"}, token="tok-payments"), 403, "forbidden")


@pytest.mark.parametrize(
    ("method", "path", "allowed", "denied"),
    [
        ("POST", "/v1/deposits", "tok-payments", "tok-orders"),
        ("POST", "/v1/withdrawals", "tok-payments", "tok-support"),
        ("POST", "/v1/transfers", "tok-payments", "tok-accounting"),
        ("POST", "/v1/reservations", "tok-orders", "tok-payments"),
        ("POST", "/v1/reservations/recognize", "tok-orders", "tok-support"),
        ("POST", "/v1/reservations/cancel", "tok-orders", "tok-payments"),
        ("GET", "/v1/reservations?user_id=1&service_id=1&order_id=1", "tok-support", "tok-payments"),
        ("GET", "/v1/users/1/balance", "tok-accounting", None),
        ("PUT", "/v1/services/1", "tok-orders", "tok-support"),
    ],
)
async def test_roles(api: Api, method: str, path: str, allowed: str, denied: str | None) -> None:
    body = {} if method != "GET" else None
    problem(await api.request(method, path, body, token=None), 401, "unauthenticated")
    problem(await api.request(method, path, body, token="nope"), 401, "unauthenticated")
    problem(
        await api.request(method, path, body, token=None, headers={"Authorization": "Basic abc"}),
        401,
        "unauthenticated",
    )
    if denied:
        problem(await api.request(method, path, body, token=denied), 403, "forbidden")
    for token in (allowed, "tok-admin"):
        r = await api.request(method, path, body, token=token)
        assert r.status not in (401, 403), (token, r.body)


async def test_unknown_route_and_method_are_problems(api: Api) -> None:
    problem(await api.get("/nowhere"), 404, "not_found")
    problem(await api.post("/v1/deposits/extra", {}), 404, "not_found")
    r = await api.request("DELETE", "/v1/deposits")
    problem(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    problem(await api.get("/v1/deposits"), 405, "method_not_allowed")


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.get("/healthz", token=None)).status == 200
    r = await api.get("/readyz", token=None)
    assert r.status == 200 and r.json["checks"]["redis"] == "ok"


async def test_request_id_is_echoed_or_generated(api: Api) -> None:
    r = await api.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = await api.get("/nowhere")
    assert len(r.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize(("raw", "status"), [("11.0", 200), ("11.00", 200), ("11.5", 400), ("١١", 400), ("11.", 400)])
async def test_path_ids_take_integral_forms_only(api: Api, raw: str, status: int) -> None:
    await api.deposit(11, "1.00")
    r = await api.get(f"/v1/users/{raw}/balance", token="tok-payments")
    assert r.status == status, r.body
    if status == 200:
        assert r.json["user_id"] == 11
