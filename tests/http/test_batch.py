"""POST /v1/batch over real HTTP, on fakeredis and on a real redis-server: each operation on its own."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from billing.bootstrap import Context
from tests.support.api import Api, Response
from tests.support.state import last_sequences

# Also on `billing serve --workers 2` over a Redis Cluster (tests/support/cluster_service.py).
pytestmark = pytest.mark.cluster_server


def problem(response: Response, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.content_type.startswith("application/problem+json")
    assert response.json["code"] == code and response.json["status"] == status


async def batch(api: Api, operations: Any, token: str = "tok-admin") -> Response:
    return await api.post("/v1/batch", {"operations": operations}, token=token)


async def transactions_written(ctx: Context) -> int:
    """The ledger's transaction id sequence: how many transaction records exist (the projector trims the outbox)."""
    return await last_sequences(ctx.redis, ctx.ledger.keys)


def statuses(response: Response) -> list[int]:
    assert response.status == 200, response.body
    return [item["status"] for item in response.json["results"]]


async def test_mixed_operations_run_in_order_each_with_its_endpoint_body(api: Api) -> None:
    r = await batch(
        api,
        [
            {"op": "deposit", "user_id": 1, "amount": "100.00", "comment": "salary"},
            {"op": "withdrawal", "user_id": 1, "amount": "10.00"},
            {"op": "transfer", "from_user_id": 1, "to_user_id": 2, "amount": "20.00"},
            {"op": "reserve", "user_id": 1, "service_id": 7, "order_id": 70, "amount": "30.00", "service_name": "Ads"},
            {"op": "recognize", "user_id": 1, "service_id": 7, "order_id": 70, "amount": "25.00"},
            {"op": "reserve", "user_id": 2, "service_id": 7, "order_id": 71, "amount": "5.00"},
            {"op": "cancel", "user_id": 2, "service_id": 7, "order_id": 71},
        ],
    )
    assert statuses(r) == [201, 201, 201, 201, 200, 201, 200]
    results = [item["body"] for item in r.json["results"]]
    assert results[0]["transaction"]["comment"] == "salary"
    assert results[0]["balance"] == {"user_id": 1, "available": "100.00", "reserved": "0.00"}
    assert results[1]["balance"]["available"] == "90.00"
    assert results[2]["recipient_balance"] == {"user_id": 2, "available": "20.00", "reserved": "0.00"}
    assert results[3]["reservation"]["status"] == "reserved"
    assert results[3]["balance"] == {"user_id": 1, "available": "40.00", "reserved": "30.00"}
    assert results[4]["reservation"]["status"] == "recognized"
    assert results[4]["reservation"]["recognized_amount"] == "25.00"
    assert results[4]["release_transaction"]["amount"] == "5.00"
    assert results[6]["reservation"]["status"] == "cancelled"
    # each user's ids grow in the order of their operations (ids of different users' partitions interleave)
    for user in (1, 2):
        ids = [body["transaction"]["id"] for body in results if body.get("balance", {}).get("user_id") == user]
        assert ids and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert (await api.balance(1)).json == {"user_id": 1, "available": "45.00", "reserved": "0.00"}
    assert (await api.balance(2)).json == {"user_id": 2, "available": "20.00", "reserved": "0.00"}


async def test_batch_result_equals_the_endpoint_answer(api: Api) -> None:
    one = await api.post("/v1/deposits", {"user_id": 5, "amount": "1.00"}, token="tok-payments")
    r = await batch(api, [{"op": "deposit", "user_id": 6, "amount": "1.00"}], token="tok-payments")
    item = r.json["results"][0]
    assert item["status"] == one.status == 201
    assert item["body"].keys() == one.json.keys()
    assert item["body"]["transaction"].keys() == one.json["transaction"].keys()


async def test_partial_failures_each_operation_its_own_status_in_order(api: Api, ctx: Context) -> None:
    r = await batch(
        api,
        [
            {"op": "withdrawal", "user_id": 3, "amount": "1.00"},  # no account yet
            {"op": "deposit", "user_id": 3, "amount": "5.00"},
            {"op": "withdrawal", "user_id": 3, "amount": "6.00"},  # too little
            {"op": "deposit", "user_id": 3, "amount": "1.005"},  # invalid amount
            {"op": "teleport", "user_id": 3, "amount": "1.00"},  # unknown op
            {"op": "deposit", "user_id": 3, "amount": "1.00", "colour": "red"},  # unknown field
            {"op": "recognize", "user_id": 3, "service_id": 1, "order_id": 1, "amount": "1"},  # no reservation
            {"op": "withdrawal", "user_id": 3, "amount": "2.00"},
        ],
    )
    assert statuses(r) == [404, 201, 409, 400, 400, 400, 404, 201]
    bodies = [item["body"] for item in r.json["results"]]
    assert [b.get("code") for b in bodies] == [
        "account_not_found",
        None,
        "insufficient_funds",
        "validation_error",
        "validation_error",
        "validation_error",
        "reservation_not_found",
        None,
    ]
    assert bodies[3]["errors"][0]["field"] == "amount"
    assert bodies[4]["errors"][0]["field"] == "op"
    assert bodies[7]["balance"]["available"] == "3.00"
    assert (await api.balance(3)).json["available"] == "3.00"
    assert await transactions_written(ctx) == 2  # only the two money movements


async def test_same_key_in_a_later_batch_is_replayed_and_changes_nothing(api: Api) -> None:
    op = {"op": "deposit", "idempotency_key": "dep-1", "user_id": 4, "amount": "10.00"}
    first = await batch(api, [op], token="tok-payments")
    assert statuses(first) == [201]
    assert "replayed" not in first.json["results"][0]
    again = await batch(api, [op, {"op": "deposit", "user_id": 4, "amount": "1.00"}], token="tok-payments")
    assert statuses(again) == [201, 201]
    replay = again.json["results"][0]
    assert replay["replayed"] is True
    assert replay["body"] == first.json["results"][0]["body"]
    assert (await api.balance(4)).json["available"] == "11.00"


async def test_same_key_with_another_body_is_422_in_its_slot_only(api: Api) -> None:
    await batch(api, [{"op": "deposit", "idempotency_key": "k", "user_id": 8, "amount": "10.00"}], token="tok-payments")
    r = await batch(
        api,
        [
            {"op": "deposit", "idempotency_key": "k", "user_id": 8, "amount": "99.00"},
            {"op": "withdrawal", "idempotency_key": "k", "user_id": 8, "amount": "10.00"},
            {"op": "deposit", "user_id": 8, "amount": "1.00"},
        ],
        token="tok-payments",
    )
    assert statuses(r) == [422, 422, 201]
    assert r.json["results"][0]["body"]["code"] == "idempotency_key_reused"
    assert (await api.balance(8)).json["available"] == "11.00"


async def test_same_key_twice_in_one_batch_runs_once(api: Api) -> None:
    op = {"op": "deposit", "idempotency_key": "twice", "user_id": 12, "amount": "2.00"}
    r = await batch(api, [op, op], token="tok-payments")
    assert statuses(r) == [201, 201]
    assert r.json["results"][1]["replayed"] is True
    assert r.json["results"][1]["body"] == r.json["results"][0]["body"]
    assert (await api.balance(12)).json["available"] == "2.00"


async def test_keys_are_scoped_per_token(api: Api) -> None:
    op = {"op": "deposit", "idempotency_key": "shared", "user_id": 13, "amount": "2.00"}
    assert statuses(await batch(api, [op], token="tok-payments")) == [201]
    other = await batch(api, [op], token="tok-payments-2")
    assert statuses(other) == [201] and "replayed" not in other.json["results"][0]
    assert (await api.balance(13)).json["available"] == "4.00"


async def test_roles_are_checked_per_operation(api: Api, ctx: Context) -> None:
    await api.deposit(9, "50.00")
    before = await transactions_written(ctx)
    r = await batch(
        api,
        [
            {"op": "deposit", "user_id": 9, "amount": "1.00"},
            {"op": "reserve", "user_id": 9, "service_id": 1, "order_id": 1, "amount": "5.00"},
            {"op": "withdrawal", "user_id": 9, "amount": "2.00"},
        ],
        token="tok-payments",
    )
    assert statuses(r) == [201, 403, 201]
    assert r.json["results"][1]["body"]["code"] == "forbidden"
    assert (await api.balance(9)).json == {"user_id": 9, "available": "49.00", "reserved": "0.00"}
    assert await transactions_written(ctx) == before + 2
    orders = await batch(
        api,
        [
            {"op": "deposit", "user_id": 9, "amount": "1.00"},
            {"op": "reserve", "user_id": 9, "service_id": 1, "order_id": 1, "amount": "5.00"},
        ],
        token="tok-orders",
    )
    assert statuses(orders) == [403, 201]


async def test_batch_needs_a_token_with_some_role(api: Api) -> None:
    op = [{"op": "deposit", "user_id": 1, "amount": "1.00"}]
    problem(await batch(api, op, token=None), 401, "unauthenticated")
    problem(await batch(api, op, token="nope"), 401, "unauthenticated")
    r = await batch(api, op, token="tok-support")  # a known token: the operation itself is refused
    assert statuses(r) == [403]
    assert (await api.balance(1)).status == 404


async def test_envelope_errors_refuse_the_whole_batch_and_change_nothing(api: Api, ctx: Context) -> None:
    await api.deposit(10, "10.00")
    before = await transactions_written(ctx)
    good = {"op": "deposit", "user_id": 10, "amount": "1.00"}
    bad_envelopes: list[Any] = [
        {"operations": good},  # not a list
        {"operations": []},  # empty
        {"operations": [good] * 1001},  # over 1000
        {"operations": [good], "extra": 1},  # unknown envelope field
        {},  # no operations
        [good],  # not an object
    ]
    for envelope in bad_envelopes:
        problem(await api.post("/v1/batch", envelope, token="tok-payments"), 400, "validation_error")
    problem(await api.request("POST", "/v1/batch", body=b'{"operations": [', token="tok-payments"), 400, "invalid_json")
    problem(
        await api.request(
            "POST", "/v1/batch", body=b"{}", token="tok-payments", headers={"Content-Type": "text/plain"}
        ),
        415,
        "unsupported_media_type",
    )
    big = orjson.dumps({"operations": [dict(good, comment="x" * 500)] * 1000, "pad": "y" * (1024 * 1024)})
    assert len(big) > 1024 * 1024
    problem(await api.request("POST", "/v1/batch", body=big, token="tok-payments"), 413, "payload_too_large")
    assert (await api.balance(10)).json["available"] == "10.00"
    assert await transactions_written(ctx) == before


async def test_a_full_batch_of_1000_under_the_body_limit_runs(api: Api) -> None:
    operations = [{"op": "deposit", "user_id": 100 + i % 10, "amount": "0.01"} for i in range(1000)]
    r = await batch(api, operations, token="tok-payments")
    assert statuses(r) == [201] * 1000
    assert (await api.balance(100)).json["available"] == "1.00"


async def test_batch_key_and_endpoint_header_are_interchangeable(api: Api) -> None:
    body = {"user_id": 11, "amount": "7.00"}
    first = await api.post("/v1/deposits", body, token="tok-payments", key="same-key")
    assert first.status == 201
    r = await batch(api, [{"op": "deposit", "idempotency_key": "same-key", **body}], token="tok-payments")
    assert statuses(r) == [201]
    assert r.json["results"][0]["replayed"] is True
    assert r.json["results"][0]["body"] == first.json
    # and the other way round, including a reuse conflict across the two ways
    r = await batch(api, [{"op": "withdrawal", "idempotency_key": "w-key", "user_id": 11, "amount": "2"}])
    assert statuses(r) == [201]
    again = await api.post("/v1/withdrawals", {"user_id": 11, "amount": "2.00"}, token="tok-admin", key="w-key")
    assert again.status == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json == r.json["results"][0]["body"]
    reused = await api.post("/v1/withdrawals", {"user_id": 11, "amount": "3"}, token="tok-admin", key="w-key")
    problem(reused, 422, "idempotency_key_reused")
    assert (await api.balance(11)).json["available"] == "5.00"


async def test_invalid_idempotency_key_in_an_operation_is_its_own_400(api: Api) -> None:
    r = await batch(
        api,
        [
            {"op": "deposit", "idempotency_key": "", "user_id": 14, "amount": "1.00"},
            {"op": "deposit", "idempotency_key": 5, "user_id": 14, "amount": "1.00"},
            {"op": "deposit", "idempotency_key": "ключ", "user_id": 14, "amount": "1.00"},
            {"op": "deposit", "idempotency_key": "ok", "user_id": 14, "amount": "1.00"},
        ],
        token="tok-payments",
    )
    assert statuses(r) == [400, 400, 400, 201]
    assert r.json["results"][0]["body"]["errors"][0]["field"] == "idempotency_key"
    assert (await api.balance(14)).json["available"] == "1.00"


async def test_batch_idempotency_key_replays_the_whole_batch(api: Api) -> None:
    await api.deposit(61, "10.00")
    operations = [
        {"op": "deposit", "user_id": 61, "amount": "1.00"},
        {"op": "withdrawal", "user_id": 61, "amount": "100.00"},  # a refusal is replayed too
        {"op": "deposit", "user_id": 62, "amount": "2.00", "idempotency_key": "own-key"},
        {"op": "deposit", "user_id": 0, "amount": "1.00"},  # invalid: stores nothing
    ]
    first = await api.post("/v1/batch", {"operations": operations}, key="whole-batch-1")
    assert first.status == 200 and "Idempotent-Replayed" not in first.headers
    assert statuses(first) == [201, 409, 201, 400]
    again = await api.post("/v1/batch", {"operations": operations}, key="whole-batch-1")
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == {
        "results": [
            first.json["results"][0],
            first.json["results"][1],
            {**first.json["results"][2], "replayed": True},  # its own key: marked as in any batch
            first.json["results"][3],
        ]
    }
    assert (await api.balance(61)).json["available"] == "11.00"
    assert (await api.balance(62)).json["available"] == "2.00"


async def test_batch_idempotency_key_with_another_batch_is_422_and_changes_nothing(api: Api, ctx: Context) -> None:
    await api.post("/v1/batch", {"operations": [{"op": "deposit", "user_id": 63, "amount": "1.00"}]}, key="wb-2")
    before = await transactions_written(ctx)
    other = await api.post(
        "/v1/batch", {"operations": [{"op": "deposit", "user_id": 63, "amount": "5.00"}]}, key="wb-2"
    )
    problem(other, 422, "idempotency_key_reused")
    assert await transactions_written(ctx) == before
    assert (await api.balance(63)).json["available"] == "1.00"
    # the same key on the deposit endpoint is a separate record: batch keys live apart
    assert (await api.post("/v1/deposits", {"user_id": 63, "amount": "5.00"}, key="wb-2")).status == 201


async def test_batch_key_with_odd_but_valid_json_answers_per_operation(api: Api) -> None:
    body = b'{"operations": [{"op": "deposit", "user_id": 64, "amount": "1.00", "x": [123456789012345678901234567890, 1.5, "\\ud800"]}]}'
    r = await api.request("POST", "/v1/batch", body=body, key="odd-json")
    assert statuses(r) == [400]
    again = await api.request("POST", "/v1/batch", body=body, key="odd-json")
    assert again.json == r.json


async def test_batch_keys_never_collide_with_derived_operation_keys(api: Api) -> None:
    first = await api.post(
        "/v1/batch", {"operations": [{"op": "deposit", "user_id": 65, "amount": "1.00"}]}, key="abc#0"
    )
    second = await api.post(
        "/v1/batch", {"operations": [{"op": "deposit", "user_id": 65, "amount": "2.00"}]}, key="abc"
    )
    assert statuses(first) == [201] and statuses(second) == [201]
    third = await api.post("/v1/batch", {"operations": [{"op": "deposit", "user_id": 66, "amount": "3.00"}]}, key="xyz")
    fourth = await api.post(
        "/v1/batch", {"operations": [{"op": "deposit", "user_id": 66, "amount": "4.00"}]}, key="xyz#0"
    )
    assert statuses(third) == [201] and statuses(fourth) == [201]
    assert (await api.balance(65)).json["available"] == "3.00"
    assert (await api.balance(66)).json["available"] == "7.00"
