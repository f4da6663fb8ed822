"""GET /v1/users/{id}/transactions over HTTP, on mongomock and on a real MongoDB wire server (SecantusDB).

Documents are written in the agreed `transactions` schema directly, so these tests exercise the read
side alone; the end-to-end tests (deposit -> projector -> history) live in tests/http/.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

import pytest
from bson import Int64

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.core.timefmt import datetime_to_ms, format_ms
from billing.views.cursor import CursorCodec
from billing.views.history import HistoryQuery
from tests.support.api import Api
from tests.support.ledger_docs import BASE_MS, SORTS, create_history_indexes, insert, ledger, txn

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True),
    pytest.mark.parametrize("redis_backend", ["fakeredis"], indirect=True),
]


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, response.body
    assert response.content_type.startswith("application/problem+json")
    body = response.json
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def history(api: Api, user_id: int, token: str = "tok-support", **params: str) -> Any:
    query = f"?{urlencode(params)}" if params else ""
    return await api.get(f"/v1/users/{user_id}/transactions{query}", token=token)


async def walk(api: Api, user_id: int, limit: int, between_pages: Any = None, **params: str) -> list[int]:
    """Follow next_cursor to the end; every page but the last is full and the last never empty."""
    ids: list[int] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        r = await history(api, user_id, limit=str(limit), **params, **extra)
        assert r.status == 200, r.body
        page = r.json
        assert set(page) == {"items", "next_cursor"}
        ids += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            assert page["items"] or not ids, "a cursor led to an empty page"
            return ids
        assert len(page["items"]) == limit
        cursor = page["next_cursor"]
        if between_pages is not None:
            await between_pages()


def expected(docs: list[dict[str, Any]], sort: str, order: str) -> list[int]:
    def key(doc: dict[str, Any]) -> tuple[int, int]:
        value = doc[sort]
        return (datetime_to_ms(value) if sort == "created_at" else int(value), int(doc["_id"]))

    return [int(doc["_id"]) for doc in sorted(docs, key=key, reverse=order == "desc")]


async def open_accounts(api: Api, *user_ids: int) -> None:
    for user_id in user_ids:
        assert (await api.deposit(user_id, "1.00")).status == 201


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No projector here: these tests write the ledger documents themselves (tests/http runs it)."""
    return settings.model_copy(update={"projector_enabled": False})


@pytest.fixture
async def seeded(api: Api, ctx: Context) -> list[dict[str, Any]]:
    await open_accounts(api, 1, 2)
    await create_history_indexes(ctx.mongo)
    docs = ledger(130)
    await insert(ctx.mongo, docs)
    return [doc for doc in docs if doc["user_id"] == 1]


@pytest.mark.parametrize(("sort", "order"), SORTS)
async def test_every_sort_and_order_walks_all_pages_without_repeat_or_gap(
    api: Api, seeded: list[dict[str, Any]], sort: str, order: str
) -> None:
    want = expected(seeded, sort, order)
    assert len(want) == 65
    for limit in (1, 4, 13, 65, 100):  # 13 and 65 divide the total: no empty trailing page
        assert await walk(api, 1, limit, sort=sort, order=order) == want


async def test_defaults_are_newest_first_twenty(api: Api, seeded: list[dict[str, Any]]) -> None:
    r = await history(api, 1)
    assert r.status == 200 and r.content_type.startswith("application/json")
    assert [item["id"] for item in r.json["items"]] == expected(seeded, "created_at", "desc")[:20]
    assert r.json["next_cursor"]


async def test_limit_may_change_between_pages(api: Api, seeded: list[dict[str, Any]]) -> None:
    first = (await history(api, 1, limit="5", sort="amount")).json
    second = (await history(api, 1, limit="50", sort="amount", cursor=first["next_cursor"])).json
    ids = [item["id"] for item in first["items"] + second["items"]]
    assert ids == expected(seeded, "amount", "desc")[:55]


async def test_item_shape(api: Api, ctx: Context) -> None:
    await open_accounts(api, 3)
    doc = txn(
        10, 3, "deposit", 10050, BASE_MS + 123, available_after=2_000_000_000_000_00, reserved_after=5, comment="первый"
    )
    doc["hash"] = "ab" * 32  # the projector's link; a document stored without one shows null
    await insert(ctx.mongo, [doc, txn(11, 3, "withdrawal", 1, BASE_MS + 124)])
    r = await history(api, 3, order="asc")
    assert r.status == 200
    assert r.json["items"] == [
        {
            "id": 10,
            "type": "deposit",
            "amount": "100.50",
            "available_after": "2000000000000.00",
            "reserved_after": "0.05",
            "created_at": format_ms(BASE_MS + 123),
            "comment": "первый",
            "description": "Пополнение баланса на 100.50 ₽",
            "hash": "ab" * 32,
        },
        {
            "id": 11,
            "type": "withdrawal",
            "amount": "0.01",
            "available_after": "0.00",
            "reserved_after": "0.00",
            "created_at": format_ms(BASE_MS + 124),
            "comment": None,
            "description": "Вывод 0.01 ₽ с баланса",
            "hash": None,
        },
    ]
    assert r.json["next_cursor"] is None


async def test_account_with_no_history_yet_has_an_empty_page(api: Api) -> None:
    await open_accounts(api, 4)  # the projector is not running here, so MongoDB has nothing yet
    r = await history(api, 4)
    assert r.status == 200 and r.json == {"items": [], "next_cursor": None}


# ---- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sort", "order"), SORTS)
async def test_type_filter_with_pagination(api: Api, seeded: list[dict[str, Any]], sort: str, order: str) -> None:
    for types in (["charge"], ["deposit", "release", "transfer_in"]):
        want = expected([doc for doc in seeded if doc["type"] in types], sort, order)
        assert want
        assert await walk(api, 1, 3, sort=sort, order=order, type=",".join(types)) == want


async def test_time_window_boundaries_are_exact(api: Api, ctx: Context) -> None:
    await open_accounts(api, 5)
    times = [BASE_MS - 1, BASE_MS, BASE_MS, BASE_MS + 1, BASE_MS + 999, BASE_MS + 1000, BASE_MS + 1001]
    docs = [txn(100 + i, 5, "deposit", 100 * (i % 2 + 1), ms) for i, ms in enumerate(times)]
    await insert(ctx.mongo, docs)
    start, end = format_ms(BASE_MS), format_ms(BASE_MS + 1000)  # from inclusive, to exclusive
    inside = [doc for doc in docs if BASE_MS <= datetime_to_ms(doc["created_at"]) < BASE_MS + 1000]
    assert len(inside) == 4
    for sort, order in SORTS:
        got = await walk(api, 5, 1, sort=sort, order=order, **{"from": start, "to": end})
        assert got == expected(inside, sort, order)
    # Only one bound; other offsets; a bound between two milliseconds.
    assert await walk(api, 5, 2, **{"from": start}) == expected(docs[1:], "created_at", "desc")
    assert await walk(api, 5, 2, to=start) == [100]
    shifted = format_ms(BASE_MS)[:-1].replace("T", " ")  # the same instant, written with +03:00
    hour = int(shifted[11:13]) + 3
    assert hour < 24
    plus3 = f"{shifted[:11]}{hour:02d}{shifted[13:]}+03:00"
    assert await walk(api, 5, 10, **{"from": plus3, "to": end}, order="asc") == [101, 102, 103, 104]
    between = format_ms(BASE_MS)[:-1] + "5Z"  # BASE_MS + 0.5 ms: excludes BASE_MS, includes BASE_MS + 1
    assert await walk(api, 5, 10, **{"from": between}, order="asc") == [103, 104, 105, 106]
    assert await walk(api, 5, 10, to=between, order="asc") == [100, 101, 102]
    empty = await history(api, 5, **{"from": start, "to": start})
    assert empty.json == {"items": [], "next_cursor": None}


async def test_type_and_time_filters_combine(api: Api, seeded: list[dict[str, Any]]) -> None:
    start_ms, end_ms = BASE_MS + 5, BASE_MS + 30
    types = ["deposit", "charge", "reserve"]
    inside = [doc for doc in seeded if doc["type"] in types and start_ms <= datetime_to_ms(doc["created_at"]) < end_ms]
    assert inside
    params = {"type": ",".join(types), "from": format_ms(start_ms), "to": format_ms(end_ms)}
    for sort, order in SORTS:
        assert await walk(api, 1, 2, sort=sort, order=order, **params) == expected(inside, sort, order)


# ---- consistency while new transactions arrive ---------------------------------------------------


async def test_pages_stay_consistent_while_transactions_arrive(
    api: Api, ctx: Context, seeded: list[dict[str, Any]]
) -> None:
    arrived: list[dict[str, Any]] = []
    next_id = [1000]
    rng = random.Random(3)

    async def arrive() -> None:
        # Newer transactions: larger ids, times no earlier than any before (the ledger's clock).
        batch = []
        for _ in range(3):
            next_id[0] += 1
            user = 1 if next_id[0] % 3 else 2
            doc = txn(next_id[0], user, "deposit", rng.choice([100, 250, 999, 5000]), BASE_MS + 10_000 + next_id[0])
            batch.append(doc)
        await insert(ctx.mongo, batch)
        arrived.extend(doc for doc in batch if doc["user_id"] == 1)

    # Newest first: what arrives after the first page is newer than everything on it, so it never
    # shows up later, and nothing that was there is skipped.
    desc = await walk(api, 1, 7, between_pages=arrive, sort="created_at", order="desc")
    assert desc == expected(seeded, "created_at", "desc")
    assert arrived

    # Oldest first: the walk reaches the new rows at the end, each exactly once.
    everything_before = seeded + arrived
    arrived.clear()
    asc = await walk(api, 1, 7, between_pages=arrive, sort="created_at", order="asc")
    assert asc[: len(everything_before)] == expected(everything_before, "created_at", "asc")
    assert len(asc) == len(set(asc))
    assert set(asc[len(everything_before) :]) <= {int(doc["_id"]) for doc in arrived}

    # By amount: new rows land anywhere; those behind the cursor are not seen, the rest are, once.
    before = everything_before + arrived
    arrived.clear()
    for order in ("desc", "asc"):
        by_amount = await walk(api, 1, 7, between_pages=arrive, sort="amount", order=order)
        assert len(by_amount) == len(set(by_amount))
        assert {int(doc["_id"]) for doc in before} <= set(by_amount)
        everyone = {int(doc["_id"]): doc for doc in before + arrived}
        assert by_amount == expected([everyone[i] for i in by_amount], "amount", order)


# ---- cursors ------------------------------------------------------------------------------------


async def test_tampered_and_foreign_cursors_are_invalid(api: Api, seeded: list[dict[str, Any]]) -> None:
    params = {"sort": "amount", "order": "asc", "type": "deposit,charge,reserve", "limit": "2"}
    cursor = (await history(api, 1, **params)).json["next_cursor"]
    assert cursor
    assert (await history(api, 1, **params, cursor=cursor)).status == 200
    payload, signature = cursor.split(".")
    tampered = [
        f"{payload[:-2]}{'AB' if payload[-2:] != 'AB' else 'CD'}.{signature}",
        f"{payload}.{signature[::-1]}",
        "garbage",
        "",
        cursor + "x",
        CursorCodec("someone-else").encode(
            HistoryQuery(1, "amount", "asc", 2, ("deposit", "charge", "reserve")).fingerprint(), 250, 3
        ),
    ]
    for bad in tampered:
        problem(await history(api, 1, **params, cursor=bad), 400, "invalid_cursor")
    foreign = [
        {**params, "sort": "created_at"},
        {**params, "order": "desc"},
        {**params, "type": "deposit"},
        {**params, "from": format_ms(BASE_MS)},
        {**params, "to": format_ms(BASE_MS + 10**6)},
    ]
    for other in foreign:
        problem(await history(api, 1, **other, cursor=cursor), 400, "invalid_cursor")
    problem(await history(api, 2, **params, cursor=cursor), 400, "invalid_cursor")  # another user's
    # The same filter written differently is the same query.
    same = {**params, "type": "reserve,deposit,charge,deposit"}
    assert (await history(api, 1, **same, cursor=cursor)).status == 200


# ---- refusals -----------------------------------------------------------------------------------


async def test_bad_parameters_answer_problem_json(api: Api, seeded: list[dict[str, Any]]) -> None:
    cases = [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"sort": "id"}, "sort"),
        ({"order": "random"}, "order"),
        ({"type": "deposit,refunds"}, "type"),
        ({"from": "2026-11-26"}, "from"),
        ({"to": "2026-11-26T04:16:01.123"}, "to"),
        ({"from": "2026-11-27T00:00:00Z", "to": "2026-11-26T00:00:00Z"}, "to"),
        ({"offset": "10"}, "offset"),
    ]
    for params, field in cases:
        body = problem(await history(api, 1, **params), 400, "validation_error")
        assert [error["field"] for error in body["errors"]] == [field], params
    body = problem(
        await api.get("/v1/users/1/transactions?limit=5&limit=6", token="tok-support"), 400, "validation_error"
    )
    assert body["errors"][0]["field"] == "limit"
    # An unencoded "+" in a URL is a space, so an offset must be sent as %2B (or use Z).
    body = problem(
        await api.get("/v1/users/1/transactions?from=2026-11-26T04:16:01+03:00", token="tok-support"),
        400,
        "validation_error",
    )
    ok = await api.get("/v1/users/1/transactions?from=2026-11-26T04:16:01%2B03:00", token="tok-support")
    assert ok.status == 200


async def test_unknown_account_and_bad_user_id(api: Api, seeded: list[dict[str, Any]]) -> None:
    body = problem(await history(api, 999), 404, "account_not_found")
    assert "999" in body["detail"]
    # Validation comes first: a bad query is a 400 even for an unknown account.
    problem(await history(api, 999, limit="0"), 400, "validation_error")
    for raw in ("0", "-1", "abc", "9223372036854775808"):
        problem(await api.get(f"/v1/users/{raw}/transactions", token="tok-support"), 400, "validation_error")


async def test_roles(api: Api, seeded: list[dict[str, Any]]) -> None:
    problem(await history(api, 1, token=None), 401, "unauthenticated")
    problem(await history(api, 1, token="tok-nobody"), 401, "unauthenticated")
    for token in ("tok-payments", "tok-orders", "tok-accounting"):
        problem(await history(api, 1, token=token), 403, "forbidden")
    for token in ("tok-support", "tok-admin"):
        assert (await history(api, 1, token=token)).status == 200
    problem(await api.post("/v1/users/1/transactions", {}, token="tok-support"), 405, "method_not_allowed")


# ---- descriptions -------------------------------------------------------------------------------


async def test_descriptions_name_service_order_and_counterparty(api: Api, ctx: Context) -> None:
    await open_accounts(api, 6)
    await ctx.mongo["services"].insert_many(
        [{"_id": Int64(7), "name": "Продвижение", "seq": 3}, {"_id": Int64(10), "name": "Boost", "seq": 4}]
    )
    t = BASE_MS
    docs = [
        txn(1, 6, "reserve", 25000, t, service_id=7, order_id=42, service_name="Старое имя"),
        txn(2, 6, "charge", 25000, t + 1, service_id=7, order_id=42, service_name="Старое имя"),
        txn(3, 6, "release", 500, t + 2, service_id=8, order_id=43, service_name="Баннер"),
        txn(4, 6, "charge", 100, t + 3, service_id=9, order_id=44),
        txn(5, 6, "transfer_out", 1000, t + 4, counterparty_user_id=77),
        txn(6, 6, "transfer_in", 1000, t + 5, counterparty_user_id=78),
        txn(7, 6, "deposit", 1, t + 6),
        txn(8, 6, "withdrawal", 2, t + 7),
        txn(9, 6, "reserve", 300, t + 8, service_id=10, order_id=45),
    ]
    await insert(ctx.mongo, docs)
    ru = (await history(api, 6, order="asc")).json["items"]
    assert [item["description"] for item in ru] == [
        "Резервирование 250.00 ₽ для оплаты услуги «Продвижение», заказ 42",
        "Списание 250.00 ₽ за услугу «Продвижение», заказ 42",
        "Возврат 5.00 ₽ из резерва: услуга «Баннер», заказ 43",
        "Списание 1.00 ₽ за услугу №9, заказ 44",
        "Перевод 10.00 ₽ пользователю 77",
        "Перевод 10.00 ₽ от пользователя 78",
        "Пополнение баланса на 0.01 ₽",
        "Вывод 0.02 ₽ с баланса",
        "Резервирование 3.00 ₽ для оплаты услуги «Boost», заказ 45",
    ]
    # Current catalog name wins over the snapshot; the snapshot is the fallback; none -> null.
    assert [item.get("service_name") for item in ru] == [
        "Продвижение",
        "Продвижение",
        "Баннер",
        None,
        None,
        None,
        None,
        None,
        "Boost",
    ]
    assert ru[0]["service_id"] == 7 and ru[0]["order_id"] == 42 and "counterparty_user_id" not in ru[0]
    assert ru[4]["counterparty_user_id"] == 77 and "service_id" not in ru[4] and "order_id" not in ru[4]
    en = (
        await api.get(
            "/v1/users/6/transactions?order=asc", token="tok-support", headers={"Accept-Language": "en-US,en;q=0.9"}
        )
    ).json["items"]
    assert [item["description"] for item in en] == [
        "250.00 RUB reserved to pay for service “Продвижение”, order 42",
        "Charge of 250.00 RUB for service “Продвижение”, order 42",
        "5.00 RUB returned from a reservation: service “Баннер”, order 43",
        "Charge of 1.00 RUB for service #9, order 44",
        "Transfer of 10.00 RUB to user 77",
        "Transfer of 10.00 RUB from user 78",
        "Deposit of 0.01 RUB",
        "Withdrawal of 0.02 RUB",
        "3.00 RUB reserved to pay for service “Boost”, order 45",
    ]
    other = await api.get("/v1/users/6/transactions", token="tok-support", headers={"Accept-Language": "fr, de;q=0.5"})
    assert other.json["items"][0]["description"].startswith("Резервирование 3.00 ₽")
    # A rename in the catalog shows in history at once (names are joined at read time).
    await ctx.mongo["services"].update_one({"_id": 7}, {"$set": {"name": "Реклама"}})
    renamed = (await history(api, 6, order="asc", limit="1")).json["items"][0]
    assert renamed["service_name"] == "Реклама" and "«Реклама»" in renamed["description"]


# ---- indexes ------------------------------------------------------------------------------------


async def test_works_before_the_indexes_exist(
    api: Api, ctx: Context, mongo_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The projector creates the indexes; history falls back to an unhinted query until it has.
    await open_accounts(api, 1, 2)
    docs = ledger(40)
    await insert(ctx.mongo, docs)
    mine = [doc for doc in docs if doc["user_id"] == 1]
    for sort, order in SORTS:
        assert await walk(api, 1, 6, sort=sort, order=order) == expected(mine, sort, order)
    if mongo_backend == "secantus":  # a real server refuses a hint naming no index; mongomock ignores hints
        assert caplog.text.count("is missing; querying without a hint") == 2  # once per index
