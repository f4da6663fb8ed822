"""A replay answers the first body byte for byte, whatever the retry's Accept-Language or the catalog says now."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.support.api import Api, Response

REPLAYED = "Idempotent-Replayed"
LANGUAGES = [("en", "ru"), ("ru", "en"), ("en", None), ("en", "en")]
LANGUAGE_IDS = ["en-then-ru", "ru-then-en", "en-then-none", "same-language"]


def lang_header(lang: str | None) -> dict[str, str]:
    return {"Accept-Language": lang} if lang else {}


async def seed(api: Api) -> None:
    """User 1 with 100.00; service 7 named "Promo"; reservations 7/1 and 7/2 of 10.00 each."""
    assert (await api.deposit(1, "100.00")).status == 201
    for order in (1, 2):
        r = await api.post(
            "/v1/reservations",
            {"user_id": 1, "service_id": 7, "order_id": order, "amount": "10.00", "service_name": "Promo"},
            token="tok-orders",
        )
        assert r.status == 201, r.body


async def rename_service(api: Api) -> None:
    assert (await api.request("PUT", "/v1/services/7", {"name": "Renamed"}, token="tok-orders")).status == 200


# (id, path, token, body): each answer carries at least one description
OPERATIONS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("deposit", "/v1/deposits", "tok-payments", {"user_id": 1, "amount": "5.00"}),
    ("withdrawal", "/v1/withdrawals", "tok-payments", {"user_id": 1, "amount": "5.00"}),
    ("transfer", "/v1/transfers", "tok-payments", {"from_user_id": 1, "to_user_id": 2, "amount": "5.00"}),
    ("reserve", "/v1/reservations", "tok-orders", {"user_id": 1, "service_id": 7, "order_id": 3, "amount": "5.00"}),
    (
        "recognize-partial",
        "/v1/reservations/recognize",
        "tok-orders",
        {"user_id": 1, "service_id": 7, "order_id": 1, "amount": "4.00"},
    ),
    ("cancel", "/v1/reservations/cancel", "tok-orders", {"user_id": 1, "service_id": 7, "order_id": 2}),
]


def assert_replay_of(first: Response, again: Response) -> None:
    assert REPLAYED not in first.headers
    assert again.headers.get(REPLAYED) == "true"
    assert again.status == first.status
    assert again.body == first.body


@pytest.mark.parametrize(("first_lang", "retry_lang"), LANGUAGES, ids=LANGUAGE_IDS)
@pytest.mark.parametrize(
    ("path", "token", "body"), [case[1:] for case in OPERATIONS], ids=[case[0] for case in OPERATIONS]
)
async def test_endpoint_replay_is_the_first_body_byte_for_byte(
    api: Api, path: str, token: str, body: dict[str, Any], first_lang: str, retry_lang: str | None
) -> None:
    await seed(api)
    first = await api.post(path, body, token=token, key="k", headers=lang_header(first_lang))
    assert first.status in (200, 201), first.body
    assert b'"description"' in first.body
    await rename_service(api)
    assert_replay_of(first, await api.post(path, body, token=token, key="k", headers=lang_header(retry_lang)))
    # The same operation in a batch under that key is the same replay.
    op = {"op": OP_NAMES[path], "idempotency_key": "k", **body}
    r = await api.post("/v1/batch", {"operations": [op]}, token=token, headers=lang_header(retry_lang))
    item = r.json["results"][0]
    assert item["replayed"] is True and orjson.dumps(item["body"]) == first.body


OP_NAMES = {
    "/v1/deposits": "deposit",
    "/v1/withdrawals": "withdrawal",
    "/v1/transfers": "transfer",
    "/v1/reservations": "reserve",
    "/v1/reservations/recognize": "recognize",
    "/v1/reservations/cancel": "cancel",
}


def batch_operations() -> list[dict[str, Any]]:
    return [{"op": OP_NAMES[path], **body} for _, path, _, body in OPERATIONS]


@pytest.mark.parametrize(("first_lang", "retry_lang"), LANGUAGES, ids=LANGUAGE_IDS)
async def test_batch_replay_under_its_key_is_the_first_body_byte_for_byte(
    api: Api, first_lang: str, retry_lang: str | None
) -> None:
    await seed(api)
    ops = {"operations": batch_operations()}
    first = await api.post("/v1/batch", ops, key="b", headers=lang_header(first_lang))
    assert [item["status"] for item in first.json["results"]] == [201, 201, 201, 201, 200, 200]
    await rename_service(api)
    assert_replay_of(first, await api.post("/v1/batch", ops, key="b", headers=lang_header(retry_lang)))


@pytest.mark.parametrize(("first_lang", "retry_lang"), LANGUAGES, ids=LANGUAGE_IDS)
async def test_batch_operations_under_their_own_keys_replay_their_first_bodies(
    api: Api, first_lang: str, retry_lang: str | None
) -> None:
    await seed(api)
    ops = [{**op, "idempotency_key": f"own-{i}"} for i, op in enumerate(batch_operations())]
    first = await api.post("/v1/batch", {"operations": ops}, headers=lang_header(first_lang))
    await rename_service(api)
    again = await api.post("/v1/batch", {"operations": ops}, headers=lang_header(retry_lang))
    expected = [{**item, "replayed": True} for item in first.json["results"]]
    assert again.body == orjson.dumps({"results": expected})
    # and each one by its endpoint with the header (the same token: keys are the token's)
    for i, ((_, path, _, body), item) in enumerate(zip(OPERATIONS, first.json["results"], strict=True)):
        r = await api.post(path, body, key=f"own-{i}", headers=lang_header(retry_lang))
        assert r.headers.get(REPLAYED) == "true" and r.body == orjson.dumps(item["body"])
